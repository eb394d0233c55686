"""Dataset cards: the ``README.md`` of a prepared dataset, rendered from ``cards/dataset_card.md``.

The YAML front matter carries what the Hub and ``load_dataset`` read (``configs``, ``dataset_info``, license,
task_categories, size_categories, source_datasets, tags) plus an ``hfprep`` block that says exactly how the rows
were made (tokenizer id + revision + vocab size + fingerprint, eos/pad ids, strategy, seq_len, packing,
num_reduce_chunks) and what they hold (per-split rows, tokens, padding, loss tokens, segments) — the numbers
``hfprep validate`` checks against the data. The prose explains how to load and train, shows the figures,
embeds the recipe as run (the folder's ``recipe.yaml``) and the provenance.

The card names where it is read (:class:`CardTarget`): a local folder, or a config of a Hub repo at a revision.
The only text that depends on it, the "Load it" and "Train on it" snippets, sits between
``<!-- hfprep:snippet NAME -->`` markers, so a push renders them again for the repo, config and revision it writes
to (:func:`retarget_snippets`, from the card's own YAML); links to the folder's files are relative. A folder's
card has one ``hfprep`` block; a pushed card keeps one per config (``hfprep: {configs: {NAME: block}, pushes:
...}``): :func:`hfprep_configs` and :func:`hfprep_block` read both layouts.

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
from ..tokenization.loss_probe import LossLayout
from .audit import AuditResult, audit_section
from .documents import documents_config_name, documents_entry, documents_section
from .layout import DATA_DIR, DEFAULT_CONFIG, RECIPE_NAME, TOKENIZER_DIR, split_glob
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


def hfprep_configs(meta: Mapping[str, Any], key: str = "hfprep") -> dict[str, dict[str, Any]]:
    """The per-config ``hfprep`` (or ``hfprep_kd``) blocks of a card's metadata, in card order, for every layout:
    a pushed card's ``{configs: {NAME: block}, pushes: ...}``; a folder's single block (config ``default``); the
    single block of a card pushed by an hfprep before per-config blocks (its config in ``config_name``).

    Example:
        >>> hfprep_configs({"hfprep": {"seq_len": 8, "config_name": "fr", "pushes": {}}})
        {'fr': {'seq_len': 8}}
        >>> hfprep_configs({"hfprep": {"configs": {"default": {"seq_len": 8}}, "pushes": {}}})
        {'default': {'seq_len': 8}}
    """
    block = meta.get(key)
    if not isinstance(block, Mapping):
        return {}
    configs = block.get("configs")
    if isinstance(configs, Mapping):
        return {str(name): dict(b) for name, b in configs.items() if isinstance(b, Mapping)}
    single = {k: v for k, v in block.items() if k not in ("pushes", "config_name")}
    return {str(block.get("config_name", DEFAULT_CONFIG)): single} if single else {}


def hfprep_block(meta: Mapping[str, Any], config_name: str | None = None, key: str = "hfprep") -> dict[str, Any]:
    """One config's ``hfprep`` block (:func:`hfprep_configs`): ``config_name``'s, or by default the ``default``
    config's, else the first; ``{}`` when the card has none.

    Example:
        >>> hfprep_block({"hfprep": {"configs": {"a": {"seq_len": 4}, "default": {"seq_len": 8}}}})
        {'seq_len': 8}
    """
    configs = hfprep_configs(meta, key)
    if config_name is not None:
        return configs.get(config_name, {})
    return configs.get(DEFAULT_CONFIG) or next(iter(configs.values()), {})


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


# ----------------------------------------------------------------------------------------------- where it is read


@dataclass(frozen=True)
class CardTarget:
    """Where a card is read, as its snippets name it: a local folder as typed (``load_dataset(folder)``), or
    (``on_hub``) config ``config`` of the Hub dataset repo ``name`` at ``revision`` (None: ``main``), whose rows lie
    under ``data_dir`` and other files (tokenizer, images) under ``prefix`` (``""`` or ``"<config>/"``, see
    :func:`hfprep.output.hub.hub_card_target`).

    Example:
        >>> CardTarget("me/x", "sft", "dev", "sft/", "data/sft", on_hub=True).load_args(split="train")
        '"me/x", "sft", split="train", revision="dev"'
        >>> CardTarget("out/x").load_args()
        '"out/x"'
    """

    name: str
    config: str = DEFAULT_CONFIG
    revision: str | None = None
    prefix: str = ""
    data_dir: str = DATA_DIR
    on_hub: bool = False

    def load_args(self, **kwargs: str) -> str:
        """``load_dataset``'s arguments: the repo id or folder, the config unless ``default``, ``kwargs``, the
        revision unless ``main``."""
        config = [self.config] if self.config != DEFAULT_CONFIG else []
        return _args([self.name, *config], {**kwargs, **self.revision_kwargs()})

    def revision_kwargs(self) -> dict[str, str]:
        """``{"revision": ...}`` for a branch other than ``main``, else nothing."""
        return {"revision": self.revision} if self.revision else {}


def _args(positional: list[str], keywords: Mapping[str, str]) -> str:
    """Python call arguments of string values: ``"a", k="v"``."""
    def py(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    return ", ".join([py(v) for v in positional] + [f"{k}={py(v)}" for k, v in keywords.items()])


SNIPPET_BEGIN = "<!-- hfprep:snippet {} -->"
SNIPPET_END = "<!-- hfprep:snippet-end {} -->"
_SNIPPET_RE = re.compile(r"<!-- hfprep:snippet (?P<name>[a-z]+) -->\n.*?\n<!-- hfprep:snippet-end (?P=name) -->", re.S)


def _marked(name: str, text: str) -> str:
    return f"{SNIPPET_BEGIN.format(name)}\n{text.strip(chr(10))}\n{SNIPPET_END.format(name)}"


def card_snippets(target: CardTarget, split_rows: Mapping[str, int], tokenizer_dir: str | None) -> dict[str, str]:
    """The card's ``load`` and ``train`` snippets for ``target``, each between its markers: ``load_dataset`` with
    the repo id (or folder), the config when it is not ``default`` and the revision when it is not ``main``; the
    bundled tokenizer (``tokenizer_dir`` in the folder) by its path in the repo.

    Example:
        >>> snip = card_snippets(CardTarget("out/x"), {"train": 3}, "tokenizer")
        >>> print(snip["load"])
        <!-- hfprep:snippet load -->
        ```python
        from datasets import load_dataset
        from transformers import AutoTokenizer
        <BLANKLINE>
        ds = load_dataset("out/x")
        print(ds)  # train: 3 rows
        tokenizer = AutoTokenizer.from_pretrained("out/x", subfolder="tokenizer")  # the tokenizer that made the rows
        ```
        <!-- hfprep:snippet-end load -->
    """
    where = ""
    if target.config != DEFAULT_CONFIG:
        where = (f"Config **`{target.config}`** of this repository: its rows are under `{target.data_dir}/`"
                 + (f", its other files under `{target.prefix}`" if target.prefix else "") + ".\n\n")
    rows = ", ".join(f"{s}: {n:,} rows" for s, n in split_rows.items())
    imports, tok = ["from datasets import load_dataset"], ""
    if tokenizer_dir and target.on_hub:
        # transformers looks for a subfolder in model repos only: fetch the dataset repo's tokenizer files first.
        sub = target.prefix + tokenizer_dir
        fetch = {"repo_type": "dataset", "allow_patterns": f"{sub}/*", **target.revision_kwargs()}
        imports += ["from huggingface_hub import snapshot_download", "from transformers import AutoTokenizer"]
        tok = (f"files = snapshot_download({_args([target.name], fetch)})\n"
               f"tokenizer = AutoTokenizer.from_pretrained(files, subfolder={json.dumps(sub)})"
               "  # the tokenizer that made the rows\n")
    elif tokenizer_dir:
        imports.append("from transformers import AutoTokenizer")
        tok = (f"tokenizer = AutoTokenizer.from_pretrained({_args([target.name], {'subfolder': tokenizer_dir})})"
               "  # the tokenizer that made the rows\n")
    load = (
        f"{where}```python\n" + "\n".join(imports)
        + f"\n\nds = load_dataset({target.load_args()})\nprint(ds)  # {rows}\n{tok}```"
    )
    train = (
        "```python\nfrom datasets import load_dataset\n"
        "from transformers import AutoModelForCausalLM, Trainer, TrainingArguments\n"
        "from hfprep import DataCollatorForPackedLM\n\n"
        f"train = load_dataset({target.load_args(split=next(iter(split_rows)))})\n"
        'model = AutoModelForCausalLM.from_pretrained("your-model", attn_implementation="sdpa")\n'
        "trainer = Trainer(\n"
        "    model=model,\n"
        '    args=TrainingArguments(output_dir="checkpoints", per_device_train_batch_size=8, '
        "remove_unused_columns=False),\n"
        "    train_dataset=train,\n"
        "    data_collator=DataCollatorForPackedLM(),  # labels with -100 off the loss mask and across documents\n"
        ")\n"
        "trainer.train()\n```"
    )
    return {"load": _marked("load", load), "train": _marked("train", train), "documents": documents_snippet(target)}


def documents_snippet(target: CardTarget) -> str:
    """How to read the documents config at ``target`` (and, for a repo's default config, repack or export it), between
    its markers, so that a push renders it again for the repo.

    Example:
        >>> print(documents_snippet(CardTarget("me/x", "default", "dev", "", "data", on_hub=True)).splitlines()[4])
        docs = load_dataset("me/x", "documents", revision="dev")  # one tokenized document per row
    """
    config = documents_config_name(target.config)
    body = (
        "```python\nfrom datasets import load_dataset\n\n"
        f"docs = load_dataset({_args([target.name, config], target.revision_kwargs())})  # one tokenized document per row\n"
        "```"
    )
    if target.config == DEFAULT_CONFIG:  # the commands read a repository's default config
        rev = f" --revision {target.revision}" if target.revision else ""
        body += (
            "\n\n```bash\n"
            f"hfprep repack {target.name}{rev} --seq-len 4096 --output repacked   # byte-identical to a fresh run\n"
            f"hfprep export {target.name}{rev} --format megatron --output megatron/train   # Megatron-LM / NeMo\n"
            f"hfprep export {target.name}{rev} --format flat --output flat/train   # token ids end to end + .json\n"
            "```"
        )
    return _marked("documents", body)


def kd_snippet(target: CardTarget, split: str, k: int, pattern: str | None = None) -> str:
    """How to read a KD cache at ``target`` (its ``split``, top-``k`` columns), between its markers, so that a push
    renders it again for the repo: the readers take local files, so a repo's shards (``pattern``, the split's
    ``data_files`` path; default ``<data_dir>/<split>-*.parquet``) are fetched first.

    Example:
        >>> print(kd_snippet(CardTarget("me/kd", on_hub=True), "train", 8).splitlines()[6])
        folder = snapshot_download("me/kd", repo_type="dataset", allow_patterns="data/train-*.parquet")
    """
    pattern = pattern or f"{target.data_dir}/{split}-*.parquet"
    if target.on_hub:
        fetch = {"repo_type": "dataset", "allow_patterns": pattern, **target.revision_kwargs()}
        read = (
            "from huggingface_hub import snapshot_download\n"
            "from hfprep.kd import RBTopKIterableDataset, DataCollatorForKD, KDTrainer\n\n"
            "# the readers take local files: fetch the cache's shards first\n"
            f"folder = snapshot_download({_args([target.name], fetch)})\n"
            f'ds = RBTopKIterableDataset(f"{{folder}}/{pattern}", student_tokenizer=tokenizer)\n'
        )
    else:
        read = (
            "from hfprep.kd import RBTopKIterableDataset, DataCollatorForKD, KDTrainer\n\n"
            f"ds = RBTopKIterableDataset({json.dumps(f'{target.name}/{pattern}')}, student_tokenizer=tokenizer)\n"
        )
    body = (
        f"```python\n{read}```\n\n"
        f"or, datasets-native: `load_dataset({target.load_args(split=split)}).with_format(\"torch\")` (the top-k "
        f"columns are\n`Array2D((None, {k}))` features)."
    )
    return _marked("kd", body)


def snippet_facts(meta: Mapping[str, Any]) -> tuple[dict[str, int], str | None]:
    """What the snippets need from a folder card's metadata: rows per split (card order) and the bundled
    tokenizer's folder (None when the tokenizer is named by its Hub id)."""
    block = hfprep_block(meta)
    rows = {str(s): int(v.get("rows", 0)) for s, v in (block.get("stats") or {}).items() if isinstance(v, Mapping)}
    bundled = isinstance(block.get("tokenizer"), Mapping) and "subfolder" in block["tokenizer"]
    return rows, (TOKENIZER_DIR if bundled else None)


def retarget_snippets(body: str, snippets: Mapping[str, str]) -> str:
    """``body`` with each marked snippet replaced by the one of the same name in ``snippets`` (others kept).

    Example:
        >>> body = "# T\\n" + _marked("load", "old") + "\\nend\\n"
        >>> retarget_snippets(body, {"load": _marked("load", "new")}).splitlines()[2]
        'new'
    """
    return _SNIPPET_RE.sub(lambda m: snippets.get(m["name"], m[0]), body)


def bundled_tokenizer_meta(target: CardTarget) -> dict[str, Any]:
    """Where a tokenizer bundled with the rows is, read at ``target``: ``name_or_path`` (the folder or repo id),
    ``repo_type: dataset`` on the Hub, ``subfolder`` and ``revision`` (the card's *Load it* shows how to load it).

    Example:
        >>> bundled_tokenizer_meta(CardTarget("me/x", "sft", None, "sft/", "data/sft", on_hub=True))
        {'name_or_path': 'me/x', 'repo_type': 'dataset', 'subfolder': 'sft/tokenizer', 'revision': None}
    """
    hub = {"repo_type": "dataset"} if target.on_hub else {}
    return {"name_or_path": target.name, **hub, "subfolder": target.prefix + TOKENIZER_DIR, "revision": target.revision}


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
    audit: AuditResult | None = None


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
    bundled: bool
    separator: str = ""  # which token ends documents, and why (DocumentSeparator.describe)


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
    target: CardTarget
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
    loss_layout: LossLayout | None = None  # sft: what the probe conversation's mask covers
    loss_audit: dict[str, Any] | None = None
    """The loss audit's rules (:meth:`hfprep.output.audit.AuditRules.to_card`), recorded for ``hfprep validate``."""
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
    if p.loss_audit is not None:
        meta["hfprep"]["loss_audit"] = FlowMap(p.loss_audit)  # ids on one line: the header stays short
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


def loss_audit_section(p: CardParams) -> str:
    """The loss audit's table (:func:`hfprep.output.audit.audit_section`), when the run audited its rows."""
    audits = {s.name: s.audit for s in p.splits if s.audit is not None}
    return audit_section(audits) if audits else ""


def tokenizer_table(p: CardParams) -> str:
    t = p.tokenizer
    rows = [
        ("tokenizer", t.label),
        ("vocab size", f"{t.vocab_size:,}"),
        ("fingerprint (sha256 of tokenizer.json)", f"`{t.fingerprint}`"),
        ("eos id / pad id", f"{t.eos_id} / {t.pad_id}"),
        # A pipe inside a code span still ends a table cell unless escaped (`<|end_of_text|>`).
        *([("document separator", t.separator.replace("|", "\\|"))] if t.separator else []),
        ("backend", t.backend),
    ]
    if t.backend_report:
        rows.append(("backend check", backend_sentence(t.backend_report)))
    return "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def _code(text: str, in_table: bool = False) -> str:
    """``text`` as inline code, whitespace shown escaped (``\\n``); pipes escaped inside a table cell."""
    shown = text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    ticks = "`" * (max((len(m) for m in re.findall("`+", shown)), default=0) + 1)
    pad = " " if shown.startswith("`") or shown.endswith("`") else ""
    code = f"{ticks}{pad}{shown}{pad}{ticks}"
    return code.replace("|", "\\|") if in_table else code


def sft_loss_note(layout: LossLayout) -> str:
    """The ``loss_mask`` note of an SFT card, from what the probe conversation's mask covers (a table cell).

    Example:
        >>> print(sft_loss_note(LossLayout("<|im_start|>assistant\\n", "", "<|im_end|>", "<|im_end|>", "", True)))
         (each assistant answer and the `<\\|im_end\\|>` after it; no loss on system and user turns or on the `<\\|im_start\\|>assistant\\n` that opens each assistant turn)
    """

    def code(text: str) -> str:
        return _code(text, in_table=True)

    with_loss = "each assistant answer"
    if layout.before:
        with_loss += f", the {code(layout.before)} before it"
    if layout.after:
        with_loss += f" and the {code(layout.after)} after it"
    if layout.after_last != layout.after:
        if layout.after and layout.after_last.startswith(layout.after):  # e.g. the eos hfprep appends
            with_loss += f", and the {code(layout.after_last[len(layout.after) :])} after the last one"
        elif layout.after_last:  # a template that closes the last turn differently (harmony's <|return|>)
            with_loss += f" ({code(layout.after_last)} after the last one)"
    without = ["system and user turns" if layout.system else "user turns"]
    if layout.header:
        without.append(f"the {code(layout.header)} that opens each assistant turn")
    if layout.inserted:
        without.append(f"the {code(layout.inserted)} the template writes before the last answer")
    listed = without[0]
    if len(without) > 1:
        listed = ", on ".join(without[:-1]) + (", or on " if len(without) > 2 else " or on ") + without[-1]
    return f" ({with_loss}; no loss on {listed})"


def card_context(p: CardParams) -> dict[str, Any]:
    """The ``${name}`` values of the card template."""
    loss_note = {
        "pretrain": " (every real token)",
        "fim": " (only the middle and the final eos)" if p.only_middle_not_masked else " (every real token)",
        "sft": sft_loss_note(p.loss_layout) if p.loss_layout is not None else " (assistant turns)",
    }.get(p.strategy, "")
    split_rows = {s.name: s.rows for s in p.splits}
    snippets = card_snippets(p.target, split_rows, TOKENIZER_DIR if p.tokenizer.bundled else None)
    return {
        "metadata": dump_yaml(card_front_matter(p)).rstrip("\n"),
        "title": p.title,
        "description": p.description,
        "seq_len": p.seq_len,
        "strategy": p.strategy,
        "packing": p.packing,
        "padding_note": f"; rows end with padding (id {p.tokenizer.pad_id}, position 0, no loss)" if p.padded else "",
        "loss_note": loss_note,
        "load_snippet": snippets["load"],
        "train_snippet": snippets["train"],
        # Templates written before the snippets were generated use these three.
        "load_target": p.target.name,
        "load_comment": ", ".join(f"{s.name}: {s.rows:,} rows" for s in p.splits),
        "train_split": p.splits[0].name,
        "stats_table": stats_table(p.stats, p.seq_len),
        "dropped_paragraph": dropped_paragraph(p),
        "doc_lengths_caption": p.doc_lengths_caption,
        "doc_lengths_note": p.doc_lengths_note,
        "fill_sentence": fill_sentence(p),
        "fill_section": fill_section(p),
        "quality_section": quality_section(p),
        "loss_audit_section": loss_audit_section(p),
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
        "recipe_file": RECIPE_NAME,
        "hfprep_version": p.version,
        "git_commit": f"`{p.git_commit}`" if p.git_commit else "(not a git checkout)",
        "source_revision": p.source_revision,
        "recipe_sha256": p.recipe_sha256,
        "date": p.date,
        "documents_section": documents_section(documents_snippet(p.target), p.stats, p.documents, p.repacked_from)
        if p.documents is not None
        else "",
    }


def render_dataset_card(p: CardParams) -> str:
    """The README.md of a prepared folder: :func:`card_context` in the card template."""
    return render_card(card_context(p), p.template)
