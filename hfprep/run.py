"""Run a recipe end to end: source -> splits -> tokenize/key/group/pack per split -> Hub-layout folder -> card.

:func:`run_recipe` is what ``hfprep run`` calls. Engines:

* ``datasets`` (default): :meth:`PrepareForTrainingTransform.run` with ``num_proc`` workers;
* ``source.streaming: true``: :func:`hfprep.engines.streaming.prepare_streaming` over an ``IterableDataset``;
* ``engine: ray``: :func:`hfprep.engines.ray_engine.prepare_with_ray` with the :class:`~hfprep.source.loading.SourceSpec`.

The recipe becomes the stages' objects in :mod:`hfprep.configure`; the card and the summary come from
:mod:`hfprep.describe`. Everything is written into a hidden temporary folder that is
renamed into place at the end (:func:`hfprep.output.layout.atomic_output`): an error or Ctrl-C leaves no output, and an
existing output folder is refused unless ``overwrite``.

Example:
    >>> summary = run_recipe("recipes/quickstart.yaml", overwrite=True)  # doctest: +SKIP
    >>> summary["totals"]["rows_out"] > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .configure import (
    DOC_BIN_PREFIX,
    TOKENIZER_DIR,
    SplitResult,
    effective_tokenize_config,
    make_transform,
    prepare_tokenizer,
    split_stats_from,
)
from .describe import build_card, doc_lengths_note, make_summary, reduce_chunks_advice, rows_all_full
from .engines.ray_engine import prepare_with_ray
from .engines.streaming import prepare_streaming
from .errors import ConfigError, DataError
from .interrupts import handle_interrupts
from .mixture_run import run_mixture_splits
from .output.hub import push_folder
from .output.layout import CARD_NAME, IMAGES_DIR, atomic_output, check_output, claim_output, write_split
from .output.plots import fill_bin_counts, fill_histogram_png, length_bin_counts, length_histogram_png
from .output.quality import packing_report
from .output.validate import SplitStats, batch_stats
from .recipe import Recipe, load_recipe
from .schema import output_is_padded
from .scratch import run_scope
from .source.loading import (
    SourceSpec,
    check_source_text,
    load_source,
    locate_row_error,
    resolve_source,
    select_split,
)
from .tokenization.loading import (
    eos_token_id,
    vocab_size,
)
from .tokenization.stage import tokenized_features
from .version import __version__

Log = Callable[[dict[str, Any]], None]


def _noop(_: dict[str, Any]) -> None:
    return None


# ----------------------------------------------------------------------------------------------- engines


def run_split_datasets(
    recipe, info, source_ds, spec: SourceSpec, num_proc: int | None, name: str | None = None
) -> SplitResult:
    transform = make_transform(recipe, info)
    transform.progress_split = name
    part = select_split(source_ds, spec, num_proc=num_proc, name=name)
    if spec.streaming:
        out = prepare_streaming(transform, part)
    else:
        out = transform.run(part, num_proc=num_proc)
    stats, bins = split_stats_from(transform)
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
            caption, _ = doc_lengths_note(results)
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
        log({"event": "push", "repo_id": recipe.hub.repo_id})
        summary["pushed"] = push_folder(
            str(out_dir), recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision,
            config_name=recipe.hub.config_name,
            commit_message=f"hfprep {__version__}: {recipe.name or out_dir.name}",
        )
    log({"event": "summary", **summary})
    return summary


