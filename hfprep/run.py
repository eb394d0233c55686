"""Run a recipe end to end: source -> splits -> tokenize/key/group/pack per split -> Hub-layout folder -> card.

:func:`run_recipe` is what ``hfprep run`` calls. Engines:

* ``datasets`` (default): :meth:`PrepareForTrainingTransform.run` with ``num_proc`` workers;
* ``source.streaming: true``: :func:`hfprep.engines.streaming.prepare_streaming` over an ``IterableDataset``;
* ``engine: ray``: :func:`hfprep.engines.ray_engine.prepare_with_ray` with the :class:`~hfprep.source.loading.SourceSpec`.

The optional pieces are imported only when used. Everything is written into a hidden temporary folder that is
renamed into place at the end (:func:`hfprep.output.layout.atomic_output`): an error or Ctrl-C leaves no output, and an
existing output folder is refused unless ``overwrite``.

Example:
    >>> summary = run_recipe("recipes/quickstart.yaml", overwrite=True)  # doctest: +SKIP
    >>> summary["totals"]["rows_out"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import ConfigError, DataError
from .interrupts import handle_interrupts
from .output.card import (
    FlowMap,
    backend_sentence,
    dataset_info_yaml,
    dump_yaml,
    license_metadata,
    portable_path,
    render_card,
    size_category,
    stats_table,
)
from .output.layout import CARD_NAME, IMAGES_DIR, atomic_output, check_output, claim_output, split_glob, write_split
from .output.plots import fill_bin_counts, fill_histogram_png, length_bin_counts, length_histogram_png
from .output.validate import SplitStats, batch_stats
from .pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from .recipe import Recipe, load_recipe
from .schema import output_is_padded
from .scratch import run_scope
from .source.loading import (
    SourceSpec,
    check_source_text,
    load_source,
    locate_row_error,
    require_hub,
    resolve_source,
    select_split,
)
from .tokenization.loading import (
    DEFAULT_SPECIAL_TOKENS,
    PORTABLE_TOKENIZER_CLASS,
    eos_token_id,
    load_tokenizer,
    tokenizer_fingerprint,
    train_tiny_tokenizer,
    vocab_size,
)
from .tokenization.stage import TokenizeConfig, Tokenizer, document_specials, tokenized_features

Log = Callable[[dict[str, Any]], None]
TOKENIZER_DIR = "tokenizer"
DOC_BIN_PREFIX = "doclen_bin_"
PREPARE_TOKENIZE_FIELDS = ("strategy", "text_column", "on_empty", "backend")
SEED_FIELDS = ("fim_seed", "seed")  # tokenize options that take the recipe's top-level seed unless set


def _noop(_: dict[str, Any]) -> None:
    return None


# ----------------------------------------------------------------------------------------------- tokenizer


@dataclass
class TokenizerInfo:
    """The tokenizer a run used, as the card and the transform config describe it."""

    tokenizer: Any
    name_or_path: str  # what workers load (a local cache folder for a trained tokenizer)
    card_id: str  # what the card calls it
    revision: str | None
    bundle_dir: str | None = None  # a local tokenizer folder copied into the output under tokenizer/


def _texts_of(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        content = value.get("content")
        if isinstance(content, str):
            yield content
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _texts_of(v)


def training_texts(ds, columns: list[str], max_docs: int, max_chars: int, streaming: bool) -> list[str]:
    """The first documents of the source (strategy input columns), capped by count and characters."""
    rows = ds.take(max_docs) if streaming else ds.select(range(min(max_docs, len(ds))))
    texts: list[str] = []
    total = 0
    for row in rows:
        for c in columns:
            for t in _texts_of(row.get(c)):
                if not t:
                    continue
                t = t[: max_chars - total]
                texts.append(t)
                total += len(t)
                if total >= max_chars:
                    return texts
    return texts


def default_cache_dir() -> Path:
    return Path(os.environ.get("HFPREP_CACHE", Path.home() / ".cache" / "hfprep"))


def train_cached_tokenizer(texts: list[str], vocab: int, cache_dir: str | None) -> tuple[Any, str]:
    """Train (or reuse) a byte-level BPE keyed by the sha256 of its texts and options; returns (tokenizer, dir)."""
    if not texts:
        raise DataError("tokenizer.train: the source has no text to train a tokenizer on")
    # The saved class name is part of the key: folders cached before it was made portable are not reused.
    h = hashlib.sha256(
        json.dumps(
            {"vocab_size": vocab, "specials": list(DEFAULT_SPECIAL_TOKENS), "class": PORTABLE_TOKENIZER_CLASS}
        ).encode()
    )
    for t in texts:
        h.update(len(t).to_bytes(8, "big"))
        h.update(t.encode("utf-8", errors="surrogatepass"))
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "tokenizers"
    final = root / h.hexdigest()[:24]
    if not (final / "tokenizer.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            train_tiny_tokenizer(texts, tmp, vocab_size=vocab)
            if not final.exists():
                os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(str(final)), str(final)


def prepare_tokenizer(recipe: Recipe, source_ds, columns: list[str], streaming: bool) -> TokenizerInfo:
    sec = recipe.tokenizer
    if sec.train is not None:
        texts = training_texts(source_ds, columns, sec.train.max_docs, sec.train.max_chars, streaming)
        tok, path = train_cached_tokenizer(texts, sec.train.vocab_size, sec.train.cache_dir)
        card_id = f"{TOKENIZER_DIR}/ (byte-level BPE trained on the source by hfprep, bundled)"
        return TokenizerInfo(tok, path, card_id, None, path)
    assert sec.name_or_path is not None
    if not os.path.isdir(sec.name_or_path):
        require_hub(f"tokenizer.name_or_path {sec.name_or_path!r}")
    tok = load_tokenizer(sec.name_or_path, revision=sec.revision)
    if os.path.isdir(sec.name_or_path):
        # A local tokenizer travels with the dataset (a Hub id is enough to find a Hub one).
        card_id = f"{TOKENIZER_DIR}/ (local tokenizer {Path(sec.name_or_path).name!r}, bundled)"
        return TokenizerInfo(tok, sec.name_or_path, card_id, sec.revision, sec.name_or_path)
    return TokenizerInfo(tok, sec.name_or_path, sec.name_or_path, sec.revision)


# ----------------------------------------------------------------------------------------------- transform


def effective_tokenize_config(recipe: Recipe) -> TokenizeConfig:
    """The recipe's tokenize section with the tokenizer backend and (where the config has one) the seed."""
    update: dict[str, Any] = {"backend": recipe.tokenizer.backend}
    for name in SEED_FIELDS:
        if name in TokenizeConfig.model_fields and name not in recipe.tokenize.model_fields_set:
            update[name] = recipe.seed
    return recipe.tokenize.model_copy(update=update)


def transform_config(recipe: Recipe, tokenizer_name: str) -> PrepareForTrainingTransformConfig:
    """The seed's config for this recipe; tokenize options beyond the seed's go through ``fim_kwargs``."""
    tcfg = effective_tokenize_config(recipe)
    extra = {
        k: getattr(tcfg, k)
        for k in tcfg.model_fields_set | (set(SEED_FIELDS) & set(TokenizeConfig.model_fields))
        if k not in PREPARE_TOKENIZE_FIELDS
    }
    kwargs: dict[str, Any] = {
        "processing_strategy": tcfg.strategy,
        "packing_strategy": recipe.packing.strategy,
        "tokenizer_name": tokenizer_name,
        "tokenizer_revision": recipe.tokenizer.revision,
        "seq_len": recipe.packing.seq_len,
        "pad_token_id": recipe.packing.pad_token_id,
        "num_reduce_chunks": recipe.packing.num_reduce_chunks,
        "text_column": tcfg.text_column,
        "on_empty": tcfg.on_empty,
        "backend": tcfg.backend,
        "packing_kwargs": dict(recipe.packing.packing_kwargs),
        "fim_kwargs": extra,
    }
    if recipe.packing.reduce_memory_budget is not None:
        kwargs["reduce_memory_budget"] = recipe.packing.reduce_memory_budget
    cfg = PrepareForTrainingTransformConfig(**kwargs)
    try:
        cfg.tokenize_config()
    except ConfigError:
        # This version of the seed config cannot carry some tokenize options: keep the ones it accepts; the
        # datasets engine still applies the full tokenize section (see make_transform).
        allowed = {k: v for k, v in extra.items() if k in _seed_fim_keys()}
        cfg = cfg.model_copy(update={"fim_kwargs": allowed})
    return cfg


def _seed_fim_keys() -> set[str]:
    return {"only_middle_not_masked", "fim_format", "prefix_column", "middle_column", "suffix_column"}


class _RecordingTransform(PrepareForTrainingTransform):
    """Also counts document lengths (fixed quarter-octave bins) on the reduce side, where documents are whole."""

    def reduce_group_with_tail(self, key: Any, table: pa.Table) -> tuple[pa.Table, dict, pa.Table | None]:
        packed, stats, tail = super().reduce_group_with_tail(key, table)
        lengths = pa.compute.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False)
        for b, c in length_bin_counts(lengths).items():
            stats[f"{DOC_BIN_PREFIX}{b}"] = c
        return packed, stats, tail


def make_transform(recipe: Recipe, info: TokenizerInfo) -> PrepareForTrainingTransform:
    cfg = transform_config(recipe, info.name_or_path)
    transform = _RecordingTransform(cfg, tokenizer=info.tokenizer)
    full = effective_tokenize_config(recipe)
    if full != transform.tokenizer_stage.config:
        transform.tokenizer_stage = Tokenizer(info.tokenizer, full, transform.tokenizer_stage.backend)
    return transform


# ----------------------------------------------------------------------------------------------- engines


@dataclass
class SplitResult:
    name: str
    dataset: Any
    pack_stats: dict[str, Any]
    doc_bins: dict[int, int] | None
    rows_in: int | None
    backend_report: dict[str, Any] | None = None
    out_stats: SplitStats = field(default_factory=SplitStats)
    fill_bins: list[int] = field(default_factory=list)
    segment_bins: dict[int, int] = field(default_factory=dict)
    quality: dict[str, Any] | None = None


def _split_stats_from(transform: PrepareForTrainingTransform) -> tuple[dict[str, Any], dict[int, int]]:
    stats = transform.stats
    bins = {int(k[len(DOC_BIN_PREFIX) :]): int(v) for k, v in stats.items() if k.startswith(DOC_BIN_PREFIX)}
    return {k: v for k, v in stats.items() if not k.startswith(DOC_BIN_PREFIX)}, bins


def run_split_datasets(
    recipe, info, source_ds, spec: SourceSpec, num_proc: int | None, name: str | None = None
) -> SplitResult:
    transform = make_transform(recipe, info)
    transform.progress_split = name
    part = select_split(source_ds, spec, num_proc=num_proc, name=name)
    if spec.streaming:
        from .engines.streaming import prepare_streaming

        out = prepare_streaming(transform, part)
    else:
        out = transform.run(part, num_proc=num_proc)
    stats, bins = _split_stats_from(transform)
    report = getattr(transform, "backend_report", None)
    return SplitResult(spec.keep, out, stats, bins, transform.rows_in, report)


def ray_reads_files(spec: SourceSpec) -> bool:
    """True when the ray engine can read ``spec.paths`` itself (Parquet/JSONL, no row rules to apply)."""
    return (
        spec.kind == "files"
        and spec.format in ("parquet", "jsonl", "json")
        and not spec.columns
        and spec.max_rows is None
        and spec.heldout_fraction <= 0
    )


def ray_source(spec: SourceSpec, source_ds, num_proc: int | None, name: str | None = None) -> Any:
    """What the ray engine reads: the spec itself (files read on the workers) when no row rule applies, else the
    rows with the rules applied here (``max_rows``, renames, split; text folders and csv/text files)."""
    if ray_reads_files(spec):
        return spec
    return select_split(source_ds if source_ds is not None else load_source(spec), spec, num_proc=num_proc, name=name)


def run_split_ray(
    recipe, info, spec: SourceSpec, source_ds, address: str | None, num_cpus: int | None,
    name: str | None = None, verbose: bool = False, log: Log | None = None,
) -> SplitResult:
    try:
        from .engines.ray_engine import prepare_with_ray
    except ImportError as e:
        raise ConfigError(f"engine 'ray' is not available ({e}); install it with pip install 'hfprep[ray]'") from e
    if spec.streaming:
        raise ConfigError("engine 'ray' does not read streaming sources; set source.streaming: false or use 'datasets'")
    # The same transform object as the datasets engine: full tokenize section, document-length bins.
    transform = make_transform(recipe, info)
    transform.progress_split = name
    out, stats = prepare_with_ray(
        transform.config,
        ray_source(spec, source_ds, num_cpus, name),
        address=address,
        num_cpus=num_cpus,
        tokenizer=info.tokenizer,
        transform=transform,
        verbose=verbose,
    )
    if getattr(transform, "ray_log_path", None) and log is not None:
        log({"event": "ray", "ray": f"log in {transform.ray_log_path} (--verbose prints it)"})
    stats = dict(stats)
    report = stats.pop("backend_report", None)
    bins = {int(k[len(DOC_BIN_PREFIX) :]): int(v) for k, v in stats.items() if str(k).startswith(DOC_BIN_PREFIX)}
    stats = {k: v for k, v in stats.items() if not str(k).startswith(DOC_BIN_PREFIX)}
    return SplitResult(spec.keep, out, stats, bins or None, stats.get("rows_in"), report)


# ----------------------------------------------------------------------------------------------- provenance


def git_commit() -> str | None:
    """Commit of the hfprep checkout (None for an installed wheel or without git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def source_revision(spec: SourceSpec) -> str:
    """Hub: the requested revision; local: sha256 over the files' relative names and bytes (content identity)."""
    if spec.kind == "hub":
        return spec.revision or "main (not pinned: set source.revision to a commit for exact reproduction)"
    h = hashlib.sha256()
    root = spec.root or os.path.commonpath([os.path.dirname(p) for p in spec.paths])
    for p in spec.paths:
        h.update(os.path.relpath(p, root).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return f"sha256:{h.hexdigest()} over {len(spec.paths)} local file(s)"


def _version() -> str:
    from . import __version__

    return __version__


# ----------------------------------------------------------------------------------------------- card


def _doc_lengths_note(results: list[SplitResult]) -> tuple[str, str]:
    if all(r.doc_bins for r in results):
        return "Document length (tokens, before packing)", "Token count of every document before packing (log scale)."
    return (
        "Segment length (tokens)",
        "Length of the segments in the packed rows (documents, or their pieces where a document was cut).",
    )


def _path_aliases() -> dict[str, str]:
    from .recipe import STDLIB_PLACEHOLDER, stdlib_dir

    return {STDLIB_PLACEHOLDER: stdlib_dir()}


def _recipe_dir(recipe: Recipe) -> str | None:
    return os.path.dirname(os.path.abspath(recipe.path)) if recipe.path else None


def _file_sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_source(spec: SourceSpec, recipe: Recipe) -> str:
    """The source as the card shows it: Hub coordinates, or local files by their path relative to the recipe
    (file name + sha256 for files elsewhere), never a folder of this machine."""
    if spec.kind == "hub":
        return spec.describe()
    base, aliases = _recipe_dir(recipe), _path_aliases()
    if spec.kind == "text_dir":
        return f"{len(spec.paths):,} text files under `{portable_path(spec.root or '.', base, aliases)}`"
    shown = []
    for p in spec.paths[:8]:
        rel = portable_path(p, base, aliases)
        inside = rel != os.path.basename(p) or os.path.dirname(os.path.abspath(p)) == base
        shown.append(f"`{rel}`" if inside else f"`{rel}` (sha256 {_file_sha(p)[:16]})")
    more = f" and {len(spec.paths) - 8:,} more" if len(spec.paths) > 8 else ""
    return f"{len(spec.paths):,} {spec.format} file(s): " + ", ".join(shown) + more


def _local_paths(recipe: Recipe, spec: SourceSpec) -> list[str]:
    """Absolute local paths a recipe may spell out (sources, tokenizer, output), longest first."""
    roots = (getattr(spec, "root", None), recipe.output.folder, recipe.output.card_template)
    paths = list(getattr(spec, "paths", ())) + [p for p in roots if p]
    if recipe.tokenizer.name_or_path and os.path.exists(recipe.tokenizer.name_or_path):
        paths.append(recipe.tokenizer.name_or_path)
    if recipe.tokenizer.train is not None and recipe.tokenizer.train.cache_dir:
        paths.append(recipe.tokenizer.train.cache_dir)
    return sorted({os.path.abspath(p) for p in paths}, key=len, reverse=True)


def card_recipe_text(recipe: Recipe, spec: SourceSpec) -> str:
    """The recipe for the card: its own text (comments kept) with any absolute local path it spells out written
    relative to the recipe (or as a file name), so a pushed card does not show this machine's folders."""
    text = recipe.text or dump_yaml(recipe.model_dump(mode="json"))
    base, aliases = _recipe_dir(recipe), _path_aliases()
    for p in _local_paths(recipe, spec):
        if p in text:
            text = text.replace(p, portable_path(p, base, aliases))
    return text.rstrip("\n")


def card_load_target(recipe: Recipe) -> str:
    """What ``load_dataset`` is given in the card: the Hub repo id, or the output folder as typed from here."""
    if recipe.hub.repo_id:
        return recipe.hub.repo_id
    folder = os.path.abspath(recipe.output.folder)
    rel = os.path.relpath(folder)
    return rel if not rel.startswith("..") else os.path.basename(folder)


def _portable_decode_report(replaced: Any, recipe: Recipe) -> str:
    text = replaced.describe()
    first = getattr(replaced, "first_file", None)
    return text.replace(first, portable_path(first, _recipe_dir(recipe), _path_aliases())) if first else text


def rows_all_full(results: list[SplitResult], seq_len: int) -> bool:
    return all(r.out_stats.pad_tokens == 0 and r.out_stats.tokens == r.out_stats.rows * seq_len for r in results)


def build_card(
    recipe: Recipe,
    info: TokenizerInfo,
    spec: SourceSpec,
    results: list[SplitResult],
    split_bytes: dict[str, int],
    pad_id: int,
    backend_report: dict[str, Any] | None,
    engine_line: str,
    date: str,
    download_bytes: dict[str, int] | None = None,
    has_fill_plot: bool = True,
) -> str:
    """The dataset card (README.md): YAML for the Hub and ``load_dataset`` plus a compact ``hfprep`` block; prose
    with the load/train snippets, tables, figures, recipe and provenance. ``split_bytes``: Arrow bytes per split
    (``num_bytes``); ``download_bytes``: Parquet bytes."""
    tok = info.tokenizer
    tcfg = effective_tokenize_config(recipe)
    stats: dict[str, dict[str, Any]] = {}
    for r in results:
        s = r.out_stats.as_dict()
        for k in ("docs_in", "docs_dropped", "tokens_in", "tokens_dropped", "tokens_truncated"):
            if k in r.pack_stats:
                s[k] = int(r.pack_stats[k])
        if r.rows_in is not None:
            s["rows_in"] = int(r.rows_in)
            s["docs_dropped_by_tokenizer"] = int(r.rows_in) - int(r.pack_stats.get("docs_in", r.rows_in))
        stats[r.name] = FlowMap(s)  # one line per split: the header stays short
    total_rows = sum(r.out_stats.rows for r in results)
    recipe_sha = hashlib.sha256((recipe.text or "").encode()).hexdigest()
    hub = recipe.hub
    tags = ["hfprep", "tokenized", "packed", tcfg.strategy, *hub.tags]
    meta: dict[str, Any] = dict(license_metadata(hub.license))
    if hub.pretty_name or recipe.name:
        meta["pretty_name"] = hub.pretty_name or recipe.name
    meta["task_categories"] = ["text-generation"]
    meta["size_categories"] = [size_category(total_rows)]
    meta["source_datasets"] = [spec.hub_id] if spec.kind == "hub" else ["original"]
    meta["tags"] = list(dict.fromkeys(tags))
    meta["configs"] = [
        {"config_name": "default", "data_files": [{"split": r.name, "path": split_glob(r.name)} for r in results]}
    ]
    meta["dataset_info"] = dataset_info_yaml(
        tokenized_features(), {r.name: r.out_stats.rows for r in results}, split_bytes, download_bytes
    )
    load_target = card_load_target(recipe)
    tokenize_opts = json.loads(tcfg.model_dump_json(exclude_defaults=True))
    tokenize_opts.pop("strategy", None)
    meta["hfprep"] = {
        "version": _version(),
        "tokenizer": {
            # Loadable as written: AutoTokenizer.from_pretrained(name_or_path, subfolder=..., revision=...).
            "name_or_path": load_target if info.bundle_dir else info.name_or_path,
            **({"subfolder": TOKENIZER_DIR} if info.bundle_dir else {}),
            "revision": info.revision,
            "vocab_size": vocab_size(tok),
            "fingerprint": tokenizer_fingerprint(tok),
            **document_specials(tok, tcfg),
            "pad_token_id": pad_id,
            "backend": (backend_report or {}).get("backend", tcfg.backend),
        },
        "strategy": tcfg.strategy,
        "tokenize": tokenize_opts,  # options that differ from the defaults
        "seq_len": recipe.packing.seq_len,
        "packing": recipe.packing.strategy,
        "packing_kwargs": dict(recipe.packing.packing_kwargs),
        "num_reduce_chunks": recipe.packing.num_reduce_chunks,
        "splits": {
            "rule": "sha256 of the strategy input columns (canonical JSON) as a fraction < heldout_fraction",
            "heldout_fraction": recipe.splits.heldout_fraction,
        },
        "stats": stats,
    }
    replaced = getattr(spec, "replaced", None)  # a mixture's spec has none (each source reports its own)
    if replaced is not None:
        meta["hfprep"]["source_decode_replacements"] = replaced.sequences
    # The packing report (segment histograms, losses by reason) is in the prose and the images, not the YAML.
    qualities = {r.name: r.quality for r in results if r.quality is not None}

    seq_len = recipe.packing.seq_len
    padded = output_is_padded(recipe.packing.strategy, recipe.packing.packing_kwargs)
    tokens_in = sum(int(s.get("tokens_in", 0)) for s in stats.values())
    dropped = sum(int(s.get("tokens_dropped", 0)) for s in stats.values())
    truncated = sum(int(s.get("tokens_truncated", 0)) for s in stats.values())
    docs_drop = sum(int(s.get("docs_dropped", 0)) for s in stats.values())
    empty_drop = sum(int(s.get("docs_dropped_by_tokenizer", 0)) for s in stats.values())
    total_tokens = sum(r.out_stats.tokens for r in results)
    total_pad = sum(r.out_stats.pad_tokens for r in results)
    fill = total_tokens / (total_tokens + total_pad) if total_tokens + total_pad else 0.0
    dropped_reason = {
        "dense": (
            "the incomplete last row of the run (dense packing cuts documents at row ends; the leftovers of the "
            f"{recipe.packing.num_reduce_chunks} reduce groups are packed together at the end)"
        ),
        "no_incomplete": f"documents longer than {seq_len} tokens (no_incomplete never cuts a document)",
    }.get(recipe.packing.strategy, f"what the {recipe.packing.strategy} packer drops")
    pct = f" ({dropped / tokens_in:.2%} of {tokens_in:,} tokenized)" if tokens_in else ""
    dropped_par = (
        f"**Fill ratio {fill:.2%}** ({total_tokens:,} real tokens, {total_pad:,} padding). "
        f"**Dropped: {dropped:,} tokens{pct}**"
        + (f" in {docs_drop:,} whole documents" if docs_drop else "")
        + f" — {dropped_reason}"
        + (f"; {truncated:,} of them cut off documents" if truncated and truncated != dropped else "")
        + (f"; plus {empty_drop:,} empty source row(s) skipped before tokenization" if empty_drop else "")
        + "."
    )
    caption, note = _doc_lengths_note(results)
    fill_sentence = (
        "padding fills the rest of each row (no loss on it)." if padded
        else "dense packing fills every row completely." if recipe.packing.strategy == "dense"
        else "rows are not padded: each is as long as its documents (at most seq_len)."
    )
    quality_section = ""
    if qualities:
        from .output.quality import format_report

        quality_section = (
            "### Packing report\n\nFill, segments per row, segment lengths and tokens lost by reason, per split.\n\n"
            + "\n\n".join(f"**{name}**\n\n```text\n{format_report(q)}\n```" for name, q in qualities.items())
            + "\n"
        )
    tok_rows = [
        ("tokenizer", (f"`{info.name_or_path}`" if not info.bundle_dir else "bundled in this repo under "
                       f"`{TOKENIZER_DIR}/`") + (f" @ `{info.revision}`" if info.revision else "")),
        ("vocab size", f"{vocab_size(tok):,}"),
        ("fingerprint (sha256 of tokenizer.json)", f"`{tokenizer_fingerprint(tok)}`"),
        ("eos id / pad id", f"{eos_token_id(tok, tcfg.eos_token)} / {pad_id}"),
        ("backend", (backend_report or {}).get("backend", tcfg.backend)),
    ]
    if backend_report:
        tok_rows.append(("backend check", backend_sentence(backend_report)))
    tokenizer_table = "| | |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in tok_rows)
    if info.bundle_dir:
        tokenizer_table += (
            f"\n\nThe tokenizer is included in this repo: "
            f"`AutoTokenizer.from_pretrained(\"{load_target}\", subfolder=\"{TOKENIZER_DIR}\")`."
        )
    fill_section = ""
    if has_fill_plot:
        fill_section = (
            f"### Row fill\n\n![Fill per row](images/fill_per_row.png)\n\nFill = real tokens / {seq_len} per row; "
            f"{fill_sentence}\n"
        )
    elif not padded or rows_all_full(results, seq_len):
        fill_section = f"Every row holds {seq_len} real tokens (fill 100%), so there is no fill histogram.\n"
    non_default = json.loads(tcfg.model_dump_json(exclude_defaults=True))
    non_default.pop("strategy", None)
    split_names = [r.name for r in results]
    context = {
        "metadata": dump_yaml(meta).rstrip("\n"),
        "title": hub.pretty_name or recipe.name or Path(recipe.output.folder).name,
        "description": recipe.description or f"Language-model training data prepared from {card_source(spec, recipe)}.",
        "seq_len": seq_len,
        "strategy": tcfg.strategy,
        "packing": recipe.packing.strategy,
        "padding_note": f"; rows end with padding (id {pad_id}, position 0, no loss)" if padded else "",
        "loss_note": {
            "pretrain": " (every real token)",
            "fim": " (only the middle and the final eos)" if tcfg.only_middle_not_masked else " (every real token)",
            "sft": " (assistant turns, their role tokens and the final eos)",
        }.get(tcfg.strategy, ""),
        "load_target": load_target,
        "load_comment": ", ".join(f"{r.name}: {r.out_stats.rows:,} rows" for r in results),
        "train_split": split_names[0],
        "stats_table": stats_table(stats, seq_len),
        "dropped_paragraph": dropped_par,
        "doc_lengths_caption": caption,
        "doc_lengths_note": note,
        "fill_sentence": fill_sentence,
        "fill_section": fill_section,
        "quality_section": quality_section,
        "tokenizer_table": tokenizer_table,
        "source": card_source(spec, recipe)
        + (f", first {spec.max_rows:,} rows" if spec.max_rows else "")
        + (f", columns renamed {spec.columns}" if spec.columns else "")
        + (f"; {_portable_decode_report(replaced, recipe)}" if replaced is not None else ""),
        "tokenize_line": f"`{tcfg.strategy}` " + json.dumps(non_default, sort_keys=True),
        "pack_line": f"`{recipe.packing.strategy}`, seq_len {seq_len}, {recipe.packing.num_reduce_chunks} hash keys"
        + (f", options {recipe.packing.packing_kwargs}" if recipe.packing.packing_kwargs else ""),
        "splits_line": (
            f"{recipe.splits.heldout_fraction:.1%} of documents held out as `{recipe.splits.heldout_name}` by content "
            f"hash (sha256 of the input columns), the rest is `{recipe.splits.train_name}`"
            if recipe.splits.heldout_fraction > 0
            else f"one split, `{recipe.splits.train_name}`"
        ),
        "engine_line": engine_line,
        "recipe": card_recipe_text(recipe, spec),
        "hfprep_version": _version(),
        "git_commit": f"`{git_commit()}`" if git_commit() else "(not a git checkout)",
        "source_revision": source_revision(spec),
        "recipe_sha256": recipe_sha,
        "date": date,
    }
    return render_card(context, recipe.output.card_template)


# ----------------------------------------------------------------------------------------------- run


def _measure_output(r: SplitResult, pad_id: int, padded: bool) -> pa.Table:
    """The split's Arrow table, with its stats, fill bins and segment bins computed from the rows written."""
    ds = r.dataset
    table = ds.with_format("arrow")[:] if len(ds) else tokenized_features().arrow_schema.empty_table()
    table = table.select(["input_ids", "position_ids", "loss_mask"])
    total = SplitStats()
    fills: list[np.ndarray] = []
    segs: dict[int, int] = {}
    for batch in table.to_batches(max_chunksize=4096):
        s, fill, seg_len = batch_stats(pa.Table.from_batches([batch]), pad_id, padded)
        total.add(s)
        fills.append(fill)
        for b, c in length_bin_counts(seg_len).items() if len(seg_len) else ():
            segs[b] = segs.get(b, 0) + c
    r.out_stats = total
    r.fill_bins = fill_bin_counts(np.concatenate(fills) if fills else np.zeros(0))
    r.segment_bins = segs
    return table


def _quality(dataset, seq_len: int, stats: dict[str, Any], pad_token_id: int | None, padded: bool) -> dict[str, Any]:
    from .output.quality import packing_report

    return packing_report(dataset, seq_len, stats, pad_token_id=pad_token_id, padded=padded)


def run_recipe(
    recipe: Recipe | str | os.PathLike,
    *,
    overwrite: bool | None = None,
    engine: str | None = None,
    num_proc: int | None = None,
    push: bool | None = None,
    log: Log | None = None,
    verbose: bool = False,
    _before_commit: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Run a recipe and write its dataset folder; returns the summary dict (also sent to ``log`` as events).

    Args:
        recipe: a :class:`Recipe` or the path of a recipe file.
        overwrite: replace an existing output folder (default: the recipe's ``output.overwrite``).
        engine: ``datasets`` or ``ray`` (default: the recipe's ``engine.name``).
        num_proc: worker processes (default: the recipe's ``engine.num_proc``).
        push: push to ``hub.repo_id`` after writing (default: ``hub.push`` when a repo id is set).
        log: called with progress events ``{"event": ..., ...}``.
        verbose: show the engine's own log lines (Ray's; by default they go to a file named in a ``ray`` event).

    Raises:
        OutputExistsError: the output exists and ``overwrite`` is false, or it is something ``overwrite`` must not
            replace (see :func:`hfprep.output.layout.check_output`); checked before any work.
        OutputBusyError: another hfprep process is writing the same output.
        DataError / ConfigError / TokenizerError / HubError: one-line user errors.
    """
    log = log or _noop
    t0 = time.perf_counter()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    overwrite = recipe.output.overwrite if overwrite is None else overwrite
    engine = engine or recipe.engine.name
    num_proc = num_proc if num_proc is not None else recipe.engine.num_proc
    out_dir = Path(recipe.output.folder)
    # One writer per output for the whole run; scratch folders live until the run ends; Ctrl-C in num_proc workers
    # stops the pool instead of printing their tracebacks (and can no longer deadlock it).
    with handle_interrupts(), claim_output(out_dir, overwrite, run_inputs(recipe)), run_scope():
        return _run_claimed(recipe, overwrite, engine, num_proc, push, log, _before_commit, t0, out_dir, verbose)


def run_inputs(recipe: Recipe, spec: SourceSpec | None = None) -> list[str]:
    """Local paths the run reads (recipe, source files, tokenizer folders): ``--overwrite`` never deletes them."""
    paths = [recipe.path]
    name = recipe.tokenizer.name_or_path
    if name and os.path.exists(name):
        paths.append(name)
    if recipe.tokenizer.train is not None and recipe.tokenizer.train.cache_dir:
        paths.append(recipe.tokenizer.train.cache_dir)
    if spec is not None:  # a mixture's spec has no paths of its own: its recipe and tokenizer are still protected
        paths += [*getattr(spec, "paths", []), getattr(spec, "root", None)]
    return [p for p in paths if p]


def _run_claimed(
    recipe, overwrite, engine, num_proc, push, log, _before_commit, t0, out_dir, verbose=False
) -> dict[str, Any]:
    tcfg = effective_tokenize_config(recipe)
    heldout = recipe.splits.heldout_fraction
    mix = None  # a mixture recipe ('sources:'): see hfprep.mixture_run
    if recipe.sources is not None:
        from .mixture_run import run_mixture_splits

        mix = run_mixture_splits(recipe, engine, num_proc, log)
        spec, info, results = mix.spec, mix.info, mix.results
        protect = run_inputs(recipe, spec)
    else:
        spec = resolve_source(recipe.source, tcfg.input_columns(), heldout)
        protect = run_inputs(recipe, spec)
        check_output(out_dir, overwrite, protect)
        log({"event": "source", "source": spec.describe()})

        source_ds = None
        if engine == "datasets" or recipe.tokenizer.train is not None or not ray_reads_files(spec):
            source_ds = load_source(spec)
        else:
            check_source_text(spec)  # the ray workers read the files: refuse undecodable bytes here, up front
        info = prepare_tokenizer(recipe, source_ds, tcfg.input_columns(), spec.streaming)
        log({"event": "tokenizer", "tokenizer": info.card_id, "vocab_size": vocab_size(info.tokenizer)})

        plan = [(recipe.splits.train_name, "train"), (recipe.splits.heldout_name, "heldout")] if heldout > 0 else [
            (recipe.splits.train_name, "all")
        ]
        results: list[SplitResult] = []
        for name, keep in plan:
            log({"event": "split", "split": name})
            part_spec = spec.for_split(keep)
            try:
                if engine == "ray":
                    r = run_split_ray(
                        recipe, info, part_spec, source_ds, recipe.engine.address, recipe.engine.num_cpus,
                        name, verbose, log,
                    )
                elif engine == "datasets":
                    r = run_split_datasets(recipe, info, source_ds, part_spec, num_proc, name)
                else:
                    raise ConfigError(f"unknown engine {engine!r}; choose 'datasets' or 'ray'")
            except DataError as e:
                # Row numbers inside a split mean nothing to the user: name the source file and line instead.
                located = locate_row_error(e, part_spec, source_ds)
                if located is e:
                    raise
                raise located from e.__cause__
            r.name = name
            results.append(r)

    pad_id = recipe.packing.pad_token_id if recipe.packing.pad_token_id is not None else eos_token_id(info.tokenizer)
    padded = output_is_padded(recipe.packing.strategy, recipe.packing.packing_kwargs)
    tables = {r.name: _measure_output(r, pad_id, padded) for r in results}
    if mix is not None:
        tables = mix.output_tables(tables)
    if results[0].out_stats.rows == 0:
        tokens_in = int(results[0].pack_stats.get("tokens_in", 0))
        raise DataError(
            f"packing produced no rows for split {results[0].name!r} ({tokens_in:,} tokens in, all dropped); "
            f"lower packing.seq_len ({recipe.packing.seq_len}) or use more source rows"
        )
    warnings = []
    for r in results[1:]:
        if r.out_stats.rows == 0:
            warnings.append(f"split {r.name!r} is empty after packing; it is not written")
    results = [results[0]] + [r for r in results[1:] if r.out_stats.rows]
    advice = reduce_chunks_advice(recipe, results)
    if advice:
        warnings.append(advice)
        log({"event": "warning", "warning": advice})
    for r in results:
        r.quality = _quality(r.dataset, recipe.packing.seq_len, r.pack_stats, pad_id, padded)
    backend_report = next((r.backend_report for r in results if r.backend_report), None)
    engine_line = f"{engine}" + (f", num_proc {num_proc}" if num_proc else "") + (", streaming" if spec.streaming else "")

    # A fill histogram of full rows is one bar: shown only when some row has room left.
    has_fill_plot = bool(recipe.output.plots) and not rows_all_full(results, recipe.packing.seq_len)
    with atomic_output(out_dir, overwrite=overwrite, protect=protect) as tmp:
        split_bytes: dict[str, int] = {}
        arrow_bytes = {r.name: int(tables[r.name].nbytes) for r in results}  # num_bytes as datasets computes it
        for r in results:
            rel = write_split(
                tables[r.name],
                tmp,
                r.name,
                features=mix.features() if mix is not None else tokenized_features(),
                max_rows_per_shard=recipe.output.max_rows_per_shard,
                max_shard_bytes=recipe.output.max_shard_bytes,
                row_group_rows=recipe.output.row_group_rows,
            )
            split_bytes[r.name] = sum((tmp / p).stat().st_size for p in rel)
            log({"event": "wrote", "split": r.name, "shards": len(rel), "bytes": split_bytes[r.name]})
        if info.bundle_dir:
            shutil.copytree(info.bundle_dir, tmp / TOKENIZER_DIR, ignore=shutil.ignore_patterns(".*"))
        if recipe.output.plots:
            (tmp / IMAGES_DIR).mkdir()
            doc_bins = {r.name: (r.doc_bins if r.doc_bins else r.segment_bins) for r in results}
            caption, _ = _doc_lengths_note(results)
            length_histogram_png(doc_bins, tmp / IMAGES_DIR / "doc_lengths.png", title=caption,
                                 seq_len=recipe.packing.seq_len)
            if has_fill_plot:
                fill_histogram_png({r.name: r.fill_bins for r in results}, tmp / IMAGES_DIR / "fill_per_row.png",
                                   recipe.packing.seq_len)
        date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
        card = build_card(recipe, info, spec, results, arrow_bytes, pad_id, backend_report, engine_line, date,
                          download_bytes=split_bytes, has_fill_plot=has_fill_plot)
        if mix is not None:
            if recipe.output.plots:
                mix.write_chart(tmp / IMAGES_DIR / "mixture_shares.png")
            card = mix.card(card, with_chart=recipe.output.plots)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
        if _before_commit is not None:
            _before_commit(tmp)

    elapsed = time.perf_counter() - t0
    summary = make_summary(recipe, results, out_dir, engine, num_proc, spec, info, backend_report, elapsed, warnings)
    if mix is not None:
        summary["mixture"] = mix.summary()
    do_push = push if push is not None else (recipe.hub.push and recipe.hub.repo_id is not None)
    if do_push:
        if not recipe.hub.repo_id:
            raise ConfigError(f"{recipe.where}: hub.repo_id: set it to push (e.g. your-name/dataset-name)")
        from .output.hub import push_folder

        log({"event": "push", "repo_id": recipe.hub.repo_id})
        summary["pushed"] = push_folder(
            str(out_dir), recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision,
            config_name=recipe.hub.config_name,
            commit_message=f"hfprep {_version()}: {recipe.name or out_dir.name}",
        )
    log({"event": "summary", **summary})
    return summary


ROWS_PER_KEY = 32
"""A reduce group should hold at least this many rows' worth of tokens: its last, partly filled row then costs at
most ~1/64 of the group (dense drops it, the padded packers pad it)."""


def reduce_chunks_advice(recipe: Recipe, results: list[SplitResult]) -> str | None:
    """A warning with the number to use when ``num_reduce_chunks`` is so large for the data that every group is
    small and packing loses fill (padded packers) or tokens (dense tails); None when the keys do no harm.

    The advice is the largest key count that still gives every group ``ROWS_PER_KEY`` rows' worth of tokens.
    """
    keys, seq_len = recipe.packing.num_reduce_chunks, recipe.packing.seq_len
    first = results[0]
    tokens_in = int(first.pack_stats.get("tokens_in", 0))
    suggested = max(1, tokens_in // (ROWS_PER_KEY * seq_len))
    if keys <= suggested or not tokens_in:
        return None
    s = first.out_stats
    groups = min(keys, int(first.pack_stats.get("docs_in", keys)))  # at most one group per document
    # Every group ends in one partly filled row (dropped by dense, padded otherwise): harmful when those rows are
    # a noticeable share of the output.
    if not s.rows or groups / s.rows <= 2 / ROWS_PER_KEY:
        return None
    if recipe.packing.strategy == "dense":
        lost = int(first.pack_stats.get("tokens_dropped", 0))  # the tails dense could not pack
        if lost / tokens_in <= 0.01:
            return None
        harm = f"dense packing dropped {lost / tokens_in:.1%} of the tokens (the last row of every group)"
    else:
        harm = f"fill is {s.fill_ratio:.2f} (each group ends in a partly filled row: ~{groups} of {s.rows} rows)"
    return (
        f"packing.num_reduce_chunks: {keys} keys for {tokens_in:,} tokens of split {first.name!r} "
        f"(~{tokens_in / keys / seq_len:.1f} rows of {seq_len} per key): {harm}; "
        f"use num_reduce_chunks: {suggested} (>= {ROWS_PER_KEY} rows per key)"
    )


def make_summary(recipe, results, out_dir, engine, num_proc, spec, info, backend_report, elapsed, warnings) -> dict:
    splits = {}
    for r in results:
        s = r.out_stats
        d: dict[str, Any] = {
            "rows_in": r.rows_in,
            "docs_dropped_by_tokenizer": r.pack_stats.get("docs_dropped_by_tokenizer"),
            "docs_in": r.pack_stats.get("docs_in"),
            "docs_dropped": r.pack_stats.get("docs_dropped"),
            "rows_out": s.rows,
            "tokens_in": r.pack_stats.get("tokens_in"),
            "tokens_out": s.tokens,
            "tokens_dropped": r.pack_stats.get("tokens_dropped"),
            "tokens_truncated": r.pack_stats.get("tokens_truncated"),
            "pad_tokens": s.pad_tokens,
            "loss_tokens": s.loss_tokens,
            "fill_ratio": round(s.fill_ratio, 6),
        }
        if r.quality is not None:
            d["quality"] = r.quality
        splits[r.name] = d

    def tot(k: str) -> int:
        return int(sum(int(v[k] or 0) for v in splits.values()))

    tokens_in = tot("tokens_in")
    totals = {k: tot(k) for k in ("rows_in", "docs_dropped_by_tokenizer", "docs_dropped", "rows_out", "tokens_in",
                                  "tokens_out", "tokens_dropped", "pad_tokens")}
    slots = totals["tokens_out"] + totals["pad_tokens"]
    totals["fill_ratio"] = round(totals["tokens_out"] / slots, 6) if slots else 0.0
    return {
        "recipe": recipe.path,
        "output": str(out_dir),
        "engine": engine,
        "num_proc": num_proc,
        "source": spec.describe(),
        "tokenizer": info.card_id,
        "backend": backend_report,
        "seq_len": recipe.packing.seq_len,
        "packing": recipe.packing.strategy,
        "splits": splits,
        "totals": totals,
        "elapsed_s": round(elapsed, 3),
        "tokens_per_s": round(tokens_in / elapsed, 1) if elapsed > 0 else None,
        "warnings": warnings,
        "decode_replacements": getattr(getattr(spec, "replaced", None), "sequences", 0),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One screen of text: per-split table, totals, time and throughput."""
    t = summary["totals"]
    lines = [
        f"hfprep run: {summary['output']}",
        f"  source    {summary['source']}",
        f"  tokenizer {summary['tokenizer']}"
        + (f"  (backend {summary['backend'].get('backend')})" if summary.get("backend") else ""),
        f"  packing   {summary['packing']}, seq_len {summary['seq_len']}, engine {summary['engine']}",
        "",
        f"  {'split':<12}{'rows in':>12}{'rows out':>12}{'tokens in':>14}{'tokens out':>14}{'dropped':>12}{'fill':>9}",
    ]
    for name, s in summary["splits"].items():
        lines.append(
            f"  {name:<12}{s['rows_in'] or 0:>12,}{s['rows_out']:>12,}{s['tokens_in'] or 0:>14,}"
            f"{s['tokens_out']:>14,}{s['tokens_dropped'] or 0:>12,}{s['fill_ratio']:>9.2%}"
        )
    lines.append(
        f"  {'total':<12}{t['rows_in']:>12,}{t['rows_out']:>12,}{t['tokens_in']:>14,}{t['tokens_out']:>14,}"
        f"{t['tokens_dropped']:>12,}{t['fill_ratio']:>9.2%}"
    )
    lines.append("")
    dropped_pct = t["tokens_dropped"] / t["tokens_in"] if t["tokens_in"] else 0.0
    lines.append(
        f"  dropped: {t['docs_dropped_by_tokenizer']:,} empty rows, {t['docs_dropped']:,} documents, "
        f"{t['tokens_dropped']:,} tokens ({dropped_pct:.2%}); padding {t['pad_tokens']:,} tokens"
    )
    quality = {name: s["quality"] for name, s in summary["splits"].items() if s.get("quality")}
    if quality:
        from .output.quality import format_report

        for name, q in quality.items():
            lines.append(f"  packing report ({name}):")
            lines += [f"    {line}" for line in format_report(q).splitlines()]
    if summary.get("mixture"):
        from .mixture import mixture_lines

        lines += mixture_lines(summary["mixture"])
    tps = summary.get("tokens_per_s")
    lines.append(f"  time: {summary['elapsed_s']:.1f} s, {tps:,.0f} tokens/s" if tps else f"  time: {summary['elapsed_s']:.1f} s")
    if summary.get("decode_replacements"):
        lines.append(f"  decode: {summary['decode_replacements']:,} undecodable byte sequence(s) replaced by U+FFFD "
                     "(source.decode_errors: replace)")
    for w in summary.get("warnings", []):
        lines.append(f"  warning: {w}")
    if summary.get("pushed"):
        lines.append(f"  pushed: {summary['pushed']}")
    return "\n".join(lines)
