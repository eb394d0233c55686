"""Run a single-source recipe's splits on the chosen engine: tokenize -> key -> group -> pack, one split at a time.

:func:`run_source_splits` loads the source (unless Ray reads the files itself), prepares the tokenizer and runs each
split (``train``, and ``heldout`` when the recipe holds some rows out) on one engine:

* ``datasets`` (default): :meth:`~hfprep.pack.transform.PrepareForTrainingTransform.run` with ``num_proc`` workers;
* ``source.streaming: true``: :func:`hfprep.engines.streaming.prepare_streaming` over an ``IterableDataset``;
* ``engine: ray``: :func:`hfprep.engines.ray_engine.prepare_with_ray` with the
  :class:`~hfprep.source.loading.SourceSpec` (files read on the workers) or the rows with the recipe's row rules
  applied.

Every engine gets the same transform (:func:`hfprep.configure.make_transform`) and returns a
:class:`~hfprep.configure.SplitResult`; mixtures have their own runner (:mod:`hfprep.mixture_run`).

Example:
    >>> info, results = run_source_splits(recipe, spec, "datasets", num_proc=2)  # doctest: +SKIP
    >>> [r.name for r in results]  # doctest: +SKIP
    ['train', 'heldout']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .configure import (
    SplitResult,
    TokenizerInfo,
    effective_tokenize_config,
    make_transform,
    prepare_tokenizer,
    split_stats_from,
)
from .engines.direct import prepare_direct
from .engines.ray_engine import prepare_with_ray
from .engines.streaming import prepare_streaming
from .errors import ConfigError, DataError
from .recipe import Recipe
from .source.loading import (
    SourceSpec,
    check_parquet_files,
    check_source_text,
    load_source,
    locate_row_error,
    select_split,
)
from .source.readers import first_rows, reads_directly
from .tokenization.loading import vocab_size

Log = Callable[[dict[str, Any]], None]


def _noop(_: dict[str, Any]) -> None:
    return None


def run_source_splits(
    recipe: Recipe, spec: SourceSpec, engine: str, num_proc: int | None = None, log: Log | None = None,
    verbose: bool = False, outputs: Any = None,
) -> tuple[TokenizerInfo, list[SplitResult]]:
    """Load ``spec``, prepare the recipe's tokenizer and run every split on ``engine``; returns the tokenizer and the
    splits' results (train first). A :class:`~hfprep.errors.DataError` about a row names the source file and line.

    With ``outputs`` (``hfprep.run.SplitOutputs``), local files the direct engine reads are packed straight into
    the splits' writers (:func:`run_splits_direct`); the results then carry no dataset."""
    log = log or _noop
    if engine not in ("datasets", "ray"):
        raise ConfigError(f"unknown engine {engine!r}; choose 'datasets' or 'ray'")
    tcfg = effective_tokenize_config(recipe)
    log({"event": "source", "source": spec.describe()})
    if recipe.engine.reuse_tokenized:
        spec = dataclasses.replace(spec, keep_cache=True)
    elif outputs is not None and engine == "datasets" and reads_directly(
        spec, tcfg.input_columns(), tcfg.strategy in STRING_STRATEGIES
    ):
        return run_splits_direct(recipe, spec, outputs, log, verbose)
    source_ds = None
    reads_files = ray_reads_files(spec) if engine == "ray" else datasets_reads_parquet(spec)
    if recipe.tokenizer.train is not None or not reads_files:
        source_ds = load_source(spec)
    elif engine == "ray":
        check_source_text(spec)  # the ray workers read the files: refuse undecodable bytes here, up front
    else:
        check_parquet_files(spec)  # the map reads the row groups itself: refuse unreadable files here, up front
    info = prepare_tokenizer(recipe, source_ds, tcfg.input_columns(), spec.streaming)
    log({"event": "tokenizer", "tokenizer": info.card_id, "vocab_size": vocab_size(info.tokenizer)})

    plan = split_plan(recipe)
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
            else:
                r = run_split_datasets(recipe, info, source_ds, part_spec, num_proc, name)
        except DataError as e:
            # Row numbers inside a split mean nothing to the user: name the source file and line instead.
            located = locate_row_error(e, part_spec, source_ds)
            if located is e:
                raise
            raise located from e.__cause__
        r.name = name
        results.append(r)
    return info, results


def split_plan(recipe: Recipe) -> list[tuple[str, str]]:
    """``(split name, side of the held-out rule)`` of every split the recipe writes, train first."""
    splits = recipe.splits
    if splits.heldout_fraction > 0:
        return [(splits.train_name, "train"), (splits.heldout_name, "heldout")]
    return [(splits.train_name, "all")]


STRING_STRATEGIES = ("pretrain", "fim")
"""Strategies whose input columns are strings (the direct engine reads JSON Lines with an explicit string schema)."""


def run_splits_direct(
    recipe: Recipe, spec: SourceSpec, outputs: Any, log: Log, verbose: bool = False
) -> tuple[TokenizerInfo, list[SplitResult]]:
    """Every split of a local-files source in one pass (:func:`hfprep.engines.direct.prepare_direct`), packed rows
    straight into ``outputs``' writers: no Arrow copy of the source, no map output on disk."""
    tcfg = effective_tokenize_config(recipe)
    first = None
    if recipe.tokenizer.train is not None:  # the tokenizer learns from the first rows of the source
        first = first_rows(spec, tcfg.input_columns(), recipe.tokenizer.train.max_docs)
    info = prepare_tokenizer(recipe, first, tcfg.input_columns(), False)
    log({"event": "tokenizer", "tokenizer": info.card_id, "vocab_size": vocab_size(info.tokenizer)})
    transform = make_transform(recipe, info)
    plan = split_plan(recipe)
    writers = {name: outputs.open(name, info).write for name, _ in plan}
    transform.keep_documents = recipe.output.documents
    documents = {name: outputs.open_documents(name).write for name, _ in plan} if recipe.output.documents else None
    timings: dict[str, float] = {}
    stats = prepare_direct(transform, spec, plan, writers, documents=documents,
                           memory_budget=recipe.engine.memory_budget, log=log, timings=timings)
    if verbose:  # where the time went: the backend's exactness guard, reading + tokenizing, packing + writing
        log({"event": "timings", **{k: f"{v:.2f} s" for k, v in timings.items()}})
    results = []
    for name, _ in plan:
        outputs.close(name)
        if documents is not None:
            outputs.close_documents(name)
        pack_stats, bins = split_stats_from(stats[name])
        results.append(SplitResult(name, None, pack_stats, bins, pack_stats.get("rows_in"), transform.backend_report))
    return info, results


def run_split_datasets(
    recipe, info, source_ds, spec: SourceSpec, num_proc: int | None, name: str | None = None
) -> SplitResult:
    transform = make_transform(recipe, info)
    transform.progress_split = name
    transform.keep_documents = recipe.output.documents
    if source_ds is None:  # plain Parquet files (datasets_reads_parquet): no Arrow cache of the input
        out = transform.run_parquet(spec.paths, num_proc=num_proc)
    elif spec.streaming:
        out = prepare_streaming(transform, select_split(source_ds, spec, num_proc=num_proc, name=name))
    else:
        out = transform.run(select_split(source_ds, spec, num_proc=num_proc, name=name), num_proc=num_proc)
    stats, bins = split_stats_from(transform.stats)
    report = getattr(transform, "backend_report", None)
    return SplitResult(spec.keep, out, stats, bins, transform.rows_in, report, documents=transform.last_documents)


def datasets_reads_parquet(spec: SourceSpec) -> bool:
    """True when the datasets engine maps ``spec``'s Parquet files row group by row group instead of converting them
    to an Arrow cache first (plain Parquet files, no row rules, not streamed)."""
    return ray_reads_files(spec) and spec.format == "parquet" and not spec.streaming


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
    if spec.streaming:
        raise ConfigError("engine 'ray' does not read streaming sources; set source.streaming: false or use 'datasets'")
    # The same transform object as the datasets engine: full tokenize section, document-length bins.
    transform = make_transform(recipe, info)
    transform.progress_split = name
    transform.keep_documents = recipe.output.documents  # the Ray engine refuses it, in one line
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
    stats, bins = split_stats_from(stats)
    report = stats.pop("backend_report", None)
    return SplitResult(spec.keep, out, stats, bins, stats.get("rows_in"), report)


