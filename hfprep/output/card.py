"""Dataset cards: the ``README.md`` of a prepared dataset, rendered from ``cards/dataset_card.md``.

The YAML front matter carries what the Hub and ``load_dataset`` read (``configs``, ``dataset_info``, license,
task_categories, size_categories, source_datasets, tags) plus an ``hfprep`` block that says exactly how the rows
were made (tokenizer id + revision + vocab size + fingerprint, eos/pad ids, strategy, seq_len, packing,
num_reduce_chunks) and what they hold (per-split rows, tokens, padding, loss tokens, segments) — the numbers
``hfprep validate`` checks against the data. The prose explains how to load and train, shows the figures,
embeds the exact recipe and the provenance.

The template uses ``string.Template`` placeholders (``${name}``); no other dependency.

Example:
    >>> meta = {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]}
    >>> text = "---\\n" + dump_yaml(meta) + "---\\n# hi\\n"
    >>> parse_card_metadata(text)["configs"][0]["data_files"][0]["split"]
    'train'
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from datasets import DatasetInfo, SplitDict, SplitInfo

from ..errors import ConfigError
from ..schema import row_features
from .documents import documents_entry, documents_section
from .layout import split_glob
from .quality import format_report


def template_path(name: str) -> Path:
    """A card template by file name: ``hfprep/assets/<name>`` (links to ``cards/<name>`` in a checkout; a copy in
    an installed wheel)."""
    package = Path(__file__).resolve().parents[1]
    for p in (package / "assets" / name, package.parent / "cards" / name):
        if p.is_file():
            return p
    raise ConfigError(f"card template {name!r} not found next to the hfprep package; reinstall hfprep")


DEFAULT_TEMPLATE = template_path("dataset_card.md")


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    buckets = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
        (10_000_000_000, "1B<n<10B"),
    ]
    for limit, name in buckets:
        if n < limit:
            return name
    return "n>1T" if n >= 10**12 else "10B<n<100B" if n < 10**11 else "100B<n<1T"


class FlowMap(dict):
    """A mapping written on one line (``{rows: 10, tokens: 640}``): per-split counters stay compact in a card header."""


class BlockText(str):
    """A multi-line string written as a YAML literal block (``|``), line for line (a recipe kept in a card)."""


class _NoAlias(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_NoAlias.add_representer(
    FlowMap, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)
)
_NoAlias.add_representer(
    BlockText, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="|")
)


def dump_yaml(data: Any) -> str:
    """Stable, readable YAML (key order kept, no aliases, unicode as is; :class:`FlowMap` values on one line).

    Example:
        >>> print(dump_yaml({"stats": {"train": FlowMap(rows=2, tokens=8)}, "recipe": BlockText("a: 1\\nb: 2")}), end="")
        stats:
          train: {rows: 2, tokens: 8}
        recipe: |-
          a: 1
          b: 2
    """
    return yaml.dump(data, Dumper=_NoAlias, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False)


FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)
"""A card's YAML front matter: a ``---`` line, the YAML, a closing ``---`` line (the one definition)."""


def split_front_matter(text: str) -> tuple[Any, str] | None:
    """``(parsed front matter, body)`` of a card, or None when it does not start with a closed ``---`` block.

    Invalid YAML raises ``yaml.YAMLError``; an empty block parses to None. Callers decide what a missing, empty or
    non-mapping block means for them (the card of a prepared folder, a remote card, a KD cache's card).

    Example:
        >>> split_front_matter("---\\nlicense: mit\\n---\\n# Title\\n")
        ({'license': 'mit'}, '# Title\\n')
        >>> split_front_matter("# no metadata\\n") is None
        True
    """
    match = FRONT_MATTER_RE.match(text)
    if match is None:
        return None
    return yaml.safe_load(match.group(1)), text[match.end() :]


def parse_card_metadata(text: str) -> dict[str, Any]:
    """The YAML front matter of a card as a dict (``ValueError`` with the reason when absent or invalid)."""
    if not text.startswith("---"):
        raise ValueError("no YAML front matter (the card must start with a '---' line)")
    try:
        parts = split_front_matter(text)
    except yaml.YAMLError as e:
        raise ValueError(f"invalid YAML front matter ({getattr(e, 'problem', e)})") from None
    if parts is None:
        raise ValueError("YAML front matter is not closed by a '---' line")
    data = parts[0]
    if not isinstance(data, dict):
        raise ValueError("the YAML front matter must be a mapping")
    return data


def read_card_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`parse_card_metadata` of a card file."""
    return parse_card_metadata(Path(path).read_text(encoding="utf-8"))


def dataset_info_yaml(
    features,
    split_rows: Mapping[str, int],
    split_bytes: Mapping[str, int],
    download_bytes: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """``dataset_info`` exactly as ``push_to_hub`` writes it: ``num_bytes`` per split and ``dataset_size`` are the
    Arrow size of the rows (``Dataset._estimate_nbytes``), ``download_size`` the bytes of the Parquet files
    (``download_bytes``; ``split_bytes`` when not given)."""
    info = DatasetInfo(features=features)
    info.splits = SplitDict()
    for split, rows in split_rows.items():
        info.splits.add(SplitInfo(name=split, num_bytes=int(split_bytes.get(split, 0)), num_examples=int(rows)))
    info.download_size = int(sum((download_bytes if download_bytes is not None else split_bytes).values()))
    info.dataset_size = int(sum(split_bytes.values()))
    return info._to_yaml_dict()


# The license identifiers the Hub accepts in a card's ``license`` field (huggingface.co/docs/hub/repositories-licenses).
# Anything else is written as ``license: other`` + ``license_name`` (what the Hub asks for a custom license).
HUB_LICENSES = frozenset(
    """
    apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0
    cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0
    cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0
    cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl
    gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr
    mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
    deepfloyd-if-license fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma
    unknown other
    """.split()  # noqa: SIM905 - a word list is easier to compare with the Hub's table than 80 quoted strings
)


def license_metadata(license: str | None) -> dict[str, str]:
    """The card's license keys: a Hub license id as is, anything else as ``other`` + a ``license_name`` slug.

    Example:
        >>> license_metadata("MIT"), license_metadata("psf-2.0")
        ({'license': 'mit'}, {'license': 'other', 'license_name': 'psf-2.0'})
    """
    if not license:
        return {}
    lid = license.strip().lower()
    if lid in HUB_LICENSES:
        return {"license": lid}
    slug = "-".join(t for t in "".join(c if c.isalnum() or c == "." else "-" for c in lid).split("-") if t)
    return {"license": "other", "license_name": slug or "custom"}


def backend_sentence(report: Mapping[str, Any]) -> str:
    """The tokenizer backend's report (:func:`hfprep.tokenization.backends.resolve_backend`) as one sentence for the card.

    Example:
        >>> backend_sentence({"requested": "hf", "backend": "hf", "reason": "requested", "guard": None})
        'hf, as the recipe asks (the reference Hugging Face tokenizers; no check needed).'
    """
    used, requested = report.get("backend"), report.get("requested")
    guard = report.get("guard") or {}
    checked = ""
    if guard:
        checked = (
            f"the exactness guard encoded {int(guard.get('samples_checked', 0)):,} input rows and "
            f"{int(guard.get('stress_checked', 0)):,} stress strings with both backends"
            + (" and found identical ids" if guard.get("passed") else f": {int(guard.get('mismatches', 0)):,} differed")
        )
    norm = report.get("normalizer_applied_before_encoding")
    if used == requested == "hf":
        return "hf, as the recipe asks (the reference Hugging Face tokenizers; no check needed)."
    if used != "hf":
        return (
            f"{used} (recipe: {requested}): {checked or 'no check recorded'}"
            + (f"; the tokenizer's {norm} normalizer runs before it" if norm else "")
            + "."
        )
    reason = str(report.get("reason") or "no reason recorded").rstrip(".")
    return f"hf: {requested} fell back to it because {reason}."


def portable_path(path: str | os.PathLike, base: str | os.PathLike | None, aliases: Mapping[str, str] = {}) -> str:
    """A local path as a card may show it, without the machine's folders: relative to ``base`` (the recipe's
    folder) when inside it, ``{alias}/...`` when inside one of ``aliases`` (``{"{stdlib}": folder}``), else the
    file name alone.

    Example:
        >>> portable_path("/home/me/p/data/a.jsonl", "/home/me/p"), portable_path("/srv/x/b.jsonl", "/home/me/p")
        ('data/a.jsonl', 'b.jsonl')
    """
    p = os.path.abspath(path)
    bases = ([("", os.path.abspath(base))] if base else []) + [(k, os.path.abspath(v)) for k, v in aliases.items()]
    for alias, root in bases:
        if p == root or p.startswith(root.rstrip(os.sep) + os.sep):
            rel = os.path.relpath(p, root)
            rel = "" if rel == "." else rel.replace(os.sep, "/")
            return "/".join(x for x in (alias, rel) if x) or "."
    return os.path.basename(p.rstrip(os.sep)) or p


def _fmt(n: float | int) -> str:
    return f"{n:,}" if isinstance(n, int) else f"{n:.4f}"


def stats_table(stats: Mapping[str, Mapping[str, Any]], seq_len: int) -> str:
    """Markdown table of per-split counts (rows, tokens, padding, loss tokens, documents in/out, dropped)."""
    head = (
        "| split | rows | tokens | padding | tokens with loss | fill | documents in | dropped documents "
        "| dropped tokens |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for split, s in stats.items():
        lines.append(
            f"| {split} | {_fmt(int(s['rows']))} | {_fmt(int(s['tokens']))} | {_fmt(int(s['pad_tokens']))} "
            f"| {_fmt(int(s['loss_tokens']))} | {float(s['fill_ratio']):.2%} | {_fmt(int(s.get('docs_in', 0)))} "
            f"| {_fmt(int(s.get('docs_dropped', 0)))} | {_fmt(int(s.get('tokens_dropped', 0)))} |"
        )
    return "\n".join(lines)


def render_card(context: Mapping[str, Any], template: str | os.PathLike | None = None) -> str:
    """Fill the card template with ``context`` (every ``${name}`` must be given: a missing one is an error)."""
    path = Path(template) if template is not None else DEFAULT_TEMPLATE
    if not path.is_file():
        raise ConfigError(
            f"dataset card template {str(path)!r} not found; set output.card_template to a template file"
        )
    tmpl = string.Template(path.read_text(encoding="utf-8"))
    try:
        return tmpl.substitute({k: str(v) for k, v in context.items()})
    except KeyError as e:
        raise ConfigError(f"card template {str(path)!r} uses ${{{e.args[0]}}}, which hfprep does not provide") from None


# ----------------------------------------------------------------------------------------------- dataset card


@dataclass
class CardSplit:
    """One split as the card shows it: rows, real and padding tokens, its stats line and its packing report."""

    name: str
    rows: int
    tokens: int
    pad_tokens: int
    stats: dict[str, Any]
    quality: dict[str, Any] | None = None


@dataclass
class TokenizerFacts:
    """The tokenizer as the card shows it (``metadata`` is the ``hfprep.tokenizer`` block of the front matter)."""

    metadata: dict[str, Any]
    label: str
    vocab_size: int
    fingerprint: str
    eos_id: int
    pad_id: int
    backend: str
    backend_report: dict[str, Any] | None
    bundled_dir: str | None


@dataclass
class CardParams:
    """Everything the dataset card of a prepared folder says, as plain values; :func:`render_dataset_card` turns
    it into the README.md (built from a run by :func:`hfprep.describe.card_params`)."""

    title: str
    description: str
    pretty_name: str | None
    license: str | None
    tags: list[str]
    source_datasets: list[str]
    strategy: str
    tokenize_options: dict[str, Any]
    only_middle_not_masked: bool
    seq_len: int
    packing: str
    packing_kwargs: dict[str, Any]
    num_reduce_chunks: int
    padded: bool
    heldout_fraction: float
    heldout_name: str
    train_name: str
    splits: list[CardSplit]
    split_bytes: dict[str, int]
    download_bytes: dict[str, int] | None
    tokenizer: TokenizerFacts
    load_target: str
    doc_lengths_caption: str
    doc_lengths_note: str
    has_fill_plot: bool
    rows_all_full: bool
    decode_replacements: int | None
    source_line: str
    recipe_text: str
    engine_line: str
    version: str
    git_commit: str | None
    source_revision: str
    recipe_sha256: str
    date: str
    template: str | None = None
    documents: dict[str, Any] | None = None
    """The ``hfprep.documents`` block when the folder has the documents config (:mod:`hfprep.output.documents`)."""
    repacked_from: dict[str, Any] | None = None
    """``{source, revision}`` of the dataset ``hfprep repack`` read, for a repacked dataset."""
    stats: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.stats = {s.name: FlowMap(s.stats) for s in self.splits}  # one line per split: a short header


def card_front_matter(p: CardParams) -> dict[str, Any]:
    """The YAML front matter: what the Hub and ``load_dataset`` read, plus the compact ``hfprep`` block."""
    meta: dict[str, Any] = dict(license_metadata(p.license))
    if p.pretty_name:
        meta["pretty_name"] = p.pretty_name
    meta["task_categories"] = ["text-generation"]
    meta["size_categories"] = [size_category(sum(s.rows for s in p.splits))]
    meta["source_datasets"] = p.source_datasets
    meta["tags"] = list(dict.fromkeys(["hfprep", "tokenized", "packed", p.strategy, *p.tags]))
    meta["configs"] = [
        {"config_name": "default", "data_files": [{"split": s.name, "path": split_glob(s.name)} for s in p.splits]}
    ]
    if p.documents is not None:
        meta["configs"].append(documents_entry([s.name for s in p.splits]))
    meta["dataset_info"] = dataset_info_yaml(
        row_features(), {s.name: s.rows for s in p.splits}, p.split_bytes, p.download_bytes
    )
    meta["hfprep"] = {
        "version": p.version,
        "tokenizer": p.tokenizer.metadata,
        "strategy": p.strategy,
        "tokenize": p.tokenize_options,  # options that differ from the defaults
        "seq_len": p.seq_len,
        "packing": p.packing,
        "packing_kwargs": dict(p.packing_kwargs),
        "num_reduce_chunks": p.num_reduce_chunks,
        "splits": {
            "rule": "sha256 of the strategy input columns (canonical JSON) as a fraction < heldout_fraction",
            "heldout_fraction": p.heldout_fraction,
        },
        "stats": p.stats,
    }
    if p.decode_replacements is not None:
        meta["hfprep"]["source_decode_replacements"] = p.decode_replacements
    if p.documents is not None:
        meta["hfprep"]["documents"] = p.documents
    if p.repacked_from is not None:
        meta["hfprep"]["repacked_from"] = dict(p.repacked_from)
    return meta


def dropped_paragraph(p: CardParams) -> str:
    """Fill ratio and the tokens lost, with the packer's reason."""

    def total(key: str) -> int:
        return sum(int(s.get(key, 0)) for s in p.stats.values())

    tokens_in, dropped, truncated = total("tokens_in"), total("tokens_dropped"), total("tokens_truncated")
    docs_drop, empty_drop = total("docs_dropped"), total("docs_dropped_by_tokenizer")
    real = sum(s.tokens for s in p.splits)
    pad = sum(s.pad_tokens for s in p.splits)
    fill = real / (real + pad) if real + pad else 0.0
    reason = {
        "dense": (
            "the incomplete last row of the run (dense packing cuts documents at row ends; the leftovers of the "
            f"{p.num_reduce_chunks} reduce groups are packed together at the end)"
        ),
        "no_incomplete": f"documents longer than {p.seq_len} tokens (no_incomplete never cuts a document)",
    }.get(p.packing, f"what the {p.packing} packer drops")
    pct = f" ({dropped / tokens_in:.2%} of {tokens_in:,} tokenized)" if tokens_in else ""
    return (
        f"**Fill ratio {fill:.2%}** ({real:,} real tokens, {pad:,} padding). "
        f"**Dropped: {dropped:,} tokens{pct}**"
        + (f" in {docs_drop:,} whole documents" if docs_drop else "")
        + f" — {reason}"
        + (f"; {truncated:,} of them cut off documents" if truncated and truncated != dropped else "")
        + (f"; plus {empty_drop:,} empty source row(s) skipped before tokenization" if empty_drop else "")
        + "."
    )


def fill_sentence(p: CardParams) -> str:
    if p.padded:
        return "padding fills the rest of each row (no loss on it)."
    if p.packing == "dense":
        return "dense packing fills every row completely."
    return "rows are not padded: each is as long as its documents (at most seq_len)."


def fill_section(p: CardParams) -> str:
    """The fill histogram, or one line saying why there is none."""
    if p.has_fill_plot:
        return (
            f"### Row fill\n\n![Fill per row](images/fill_per_row.png)\n\nFill = real tokens / {p.seq_len} per row; "
            f"{fill_sentence(p)}\n"
        )
    if not p.padded or p.rows_all_full:
        return f"Every row holds {p.seq_len} real tokens (fill 100%), so there is no fill histogram.\n"
    return ""


def quality_section(p: CardParams) -> str:
    """The packing report of each split (segment histograms, losses by reason)."""
    qualities = {s.name: s.quality for s in p.splits if s.quality is not None}
    if not qualities:
        return ""
    return (
        "### Packing report\n\nFill, segments per row, segment lengths and tokens lost by reason, per split.\n\n"
        + "\n\n".join(f"**{name}**\n\n```text\n{format_report(q)}\n```" for name, q in qualities.items())
        + "\n"
    )


def tokenizer_table(p: CardParams) -> str:
    t = p.tokenizer
    rows = [
        ("tokenizer", t.label),
        ("vocab size", f"{t.vocab_size:,}"),
        ("fingerprint (sha256 of tokenizer.json)", f"`{t.fingerprint}`"),
        ("eos id / pad id", f"{t.eos_id} / {t.pad_id}"),
        ("backend", t.backend),
    ]
    if t.backend_report:
        rows.append(("backend check", backend_sentence(t.backend_report)))
    table = "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    if t.bundled_dir:
        table += (
            f"\n\nThe tokenizer is included in this repo: "
            f"`AutoTokenizer.from_pretrained(\"{p.load_target}\", subfolder=\"{t.bundled_dir}\")`."
        )
    return table


def card_context(p: CardParams) -> dict[str, Any]:
    """The ``${name}`` values of the card template."""
    loss_note = {
        "pretrain": " (every real token)",
        "fim": " (only the middle and the final eos)" if p.only_middle_not_masked else " (every real token)",
        "sft": " (assistant turns, their role tokens and the final eos)",
    }.get(p.strategy, "")
    return {
        "metadata": dump_yaml(card_front_matter(p)).rstrip("\n"),
        "title": p.title,
        "description": p.description,
        "seq_len": p.seq_len,
        "strategy": p.strategy,
        "packing": p.packing,
        "padding_note": f"; rows end with padding (id {p.tokenizer.pad_id}, position 0, no loss)" if p.padded else "",
        "loss_note": loss_note,
        "load_target": p.load_target,
        "load_comment": ", ".join(f"{s.name}: {s.rows:,} rows" for s in p.splits),
        "train_split": p.splits[0].name,
        "stats_table": stats_table(p.stats, p.seq_len),
        "dropped_paragraph": dropped_paragraph(p),
        "doc_lengths_caption": p.doc_lengths_caption,
        "doc_lengths_note": p.doc_lengths_note,
        "fill_sentence": fill_sentence(p),
        "fill_section": fill_section(p),
        "quality_section": quality_section(p),
        "tokenizer_table": tokenizer_table(p),
        "source": p.source_line,
        "tokenize_line": f"`{p.strategy}` " + json.dumps(p.tokenize_options, sort_keys=True),
        "pack_line": f"`{p.packing}`, seq_len {p.seq_len}, {p.num_reduce_chunks} hash keys"
        + (f", options {p.packing_kwargs}" if p.packing_kwargs else ""),
        "splits_line": (
            f"{p.heldout_fraction:.1%} of documents held out as `{p.heldout_name}` by content "
            f"hash (sha256 of the input columns), the rest is `{p.train_name}`"
            if p.heldout_fraction > 0
            else f"one split, `{p.train_name}`"
        ),
        "engine_line": p.engine_line,
        "recipe": p.recipe_text,
        "hfprep_version": p.version,
        "git_commit": f"`{p.git_commit}`" if p.git_commit else "(not a git checkout)",
        "source_revision": p.source_revision,
        "recipe_sha256": p.recipe_sha256,
        "date": p.date,
        "documents_section": documents_section(p.load_target, p.stats, p.documents, p.repacked_from)
        if p.documents is not None
        else "",
    }


def render_dataset_card(p: CardParams) -> str:
    """The README.md of a prepared folder: :func:`card_context` in the card template."""
    return render_card(card_context(p), p.template)
