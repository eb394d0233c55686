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

import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError


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


class _NoAlias(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_NoAlias.add_representer(
    FlowMap, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)
)


def dump_yaml(data: Any) -> str:
    """Stable, readable YAML (key order kept, no aliases, unicode as is; :class:`FlowMap` values on one line).

    Example:
        >>> print(dump_yaml({"stats": {"train": FlowMap(rows=2, tokens=8)}}), end="")
        stats:
          train: {rows: 2, tokens: 8}
    """
    return yaml.dump(data, Dumper=_NoAlias, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False)


def parse_card_metadata(text: str) -> dict[str, Any]:
    """The YAML front matter of a card as a dict (``ValueError`` with the reason when absent or invalid)."""
    if not text.startswith("---"):
        raise ValueError("no YAML front matter (the card must start with a '---' line)")
    end = text.find("\n---", 3)
    if end < 0:
        raise ValueError("YAML front matter is not closed by a '---' line")
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError as e:
        raise ValueError(f"invalid YAML front matter ({getattr(e, 'problem', e)})") from None
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
    from datasets import DatasetInfo, SplitDict, SplitInfo

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
