"""Run a recipe end to end: source -> splits -> tokenize/key/group/pack per split -> Hub-layout folder -> card -> push.

:func:`run_recipe` is what ``hfprep run`` calls. The splits run in :mod:`hfprep.run_splits` (one source, on the
``datasets``, streaming or Ray engine) or :mod:`hfprep.mixture_run` (``sources:``); the recipe becomes the stages'
objects in :mod:`hfprep.configure`; the card and the summary come from :mod:`hfprep.describe`. This module only
orders those steps and writes: everything goes into a hidden temporary folder that is renamed into place at the end
(:func:`hfprep.output.layout.atomic_output`), so an error or Ctrl-C leaves no output, and an existing output folder
is refused unless ``overwrite``.

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

import pyarrow as pa

from .configure import TOKENIZER_DIR, SplitResult, effective_tokenize_config
from .describe import build_card, doc_lengths_note, make_summary, measure_output, reduce_chunks_advice, rows_all_full
from .engines.ray_engine import refuse_documents
from .errors import ConfigError, DataError
from .interrupts import handle_interrupts
from .mixture_run import run_mixture_splits
from .output.documents import write_documents
from .output.hub import push_folder
from .output.layout import CARD_NAME, IMAGES_DIR, atomic_output, check_output, claim_output, write_split
from .output.plots import fill_histogram_png, length_histogram_png
from .output.quality import packing_report
from .recipe import Recipe, load_recipe
from .run_splits import run_source_splits
from .schema import document_features, output_is_padded
from .scratch import run_scope
from .source.loading import SourceSpec, resolve_source
from .tokenization.loading import eos_token_id
from .tokenization.stage import tokenized_features
from .version import __version__

Log = Callable[[dict[str, Any]], None]


def _noop(_: dict[str, Any]) -> None:
    return None


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
    if engine == "ray":
        refuse_documents(recipe.output.documents)  # before any work
    mix = None  # a mixture recipe ('sources:'): see hfprep.mixture_run
    if recipe.sources is not None:
        mix = run_mixture_splits(recipe, engine, num_proc, log)
        spec, info, results = mix.spec, mix.info, mix.results
        protect = run_inputs(recipe, spec)
    else:
        spec = resolve_source(recipe.source, effective_tokenize_config(recipe).input_columns(),
                              recipe.splits.heldout_fraction)
        protect = run_inputs(recipe, spec)
        check_output(out_dir, overwrite, protect)  # before the source is read: a refused run costs nothing
        info, results = run_source_splits(recipe, spec, engine, num_proc, log, verbose)

    pad_id = recipe.packing.pad_token_id if recipe.packing.pad_token_id is not None else eos_token_id(info.tokenizer)
    tables, results, warnings = measure_results(recipe, results, pad_id, log)
    if mix is not None:
        tables = mix.output_tables(tables)
    backend_report = next((r.backend_report for r in results if r.backend_report), None)
    engine_line = f"{engine}" + (f", num_proc {num_proc}" if num_proc else "") + (", streaming" if spec.streaming else "")

    with atomic_output(out_dir, overwrite=overwrite, protect=protect) as tmp:
        features = mix.features() if mix is not None else tokenized_features()
        split_bytes = write_splits(tmp, recipe, results, tables, features, log)
        if recipe.output.documents:
            write_documents_config(tmp, recipe, results, with_source=mix is not None, log=log)
        if info.bundle_dir:
            shutil.copytree(info.bundle_dir, tmp / TOKENIZER_DIR, ignore=shutil.ignore_patterns(".*"))
        has_fill_plot = write_plots(tmp, recipe, results)
        date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
        arrow_bytes = {r.name: int(tables[r.name].nbytes) for r in results}  # num_bytes as datasets computes it
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
        summary["pushed"] = _push(recipe, out_dir, log)
    log({"event": "summary", **summary})
    return summary


def measure_results(
    recipe: Recipe, results: list[SplitResult], pad_id: int, log: Log
) -> tuple[dict[str, pa.Table], list[SplitResult], list[str]]:
    """The packed splits as written and described: every split's table and stats (:func:`measure_output`), the
    splits kept (:func:`_keep_written_splits`) with their packing reports, and the run's warnings."""
    padded = output_is_padded(recipe.packing.strategy, recipe.packing.packing_kwargs)
    tables = {r.name: measure_output(r, pad_id, padded) for r in results}
    results, warnings = _keep_written_splits(recipe, results, log)
    for r in results:
        r.quality = packing_report(r.dataset, recipe.packing.seq_len, r.pack_stats, pad_token_id=pad_id, padded=padded)
    return tables, results, warnings


def _keep_written_splits(recipe: Recipe, results: list[SplitResult], log: Log) -> tuple[list[SplitResult], list[str]]:
    """Refuse a run whose first split packed no row; drop (with a warning) later splits that are empty."""
    if results[0].out_stats.rows == 0:
        tokens_in = int(results[0].pack_stats.get("tokens_in", 0))
        raise DataError(
            f"packing produced no rows for split {results[0].name!r} ({tokens_in:,} tokens in, all dropped); "
            f"lower packing.seq_len ({recipe.packing.seq_len}) or use more source rows"
        )
    warnings = [f"split {r.name!r} is empty after packing; it is not written" for r in results[1:] if not r.out_stats.rows]
    results = [results[0]] + [r for r in results[1:] if r.out_stats.rows]
    advice = reduce_chunks_advice(recipe, results)
    if advice:
        warnings.append(advice)
        log({"event": "warning", "warning": advice})
    return results, warnings


def write_splits(
    tmp: Path, recipe: Recipe, results: list[SplitResult], tables: dict[str, pa.Table], features, log: Log = _noop
) -> dict[str, int]:
    """Write every split's Parquet shards into ``tmp``; returns the bytes written per split."""
    split_bytes: dict[str, int] = {}
    for r in results:
        rel = write_split(
            tables[r.name],
            tmp,
            r.name,
            features=features,
            max_rows_per_shard=recipe.output.max_rows_per_shard,
            max_shard_bytes=recipe.output.max_shard_bytes,
            row_group_rows=recipe.output.row_group_rows,
        )
        split_bytes[r.name] = sum((tmp / p).stat().st_size for p in rel)
        log({"event": "wrote", "split": r.name, "shards": len(rel), "bytes": split_bytes[r.name]})
    return split_bytes


def write_documents_config(
    tmp: Path, recipe: Recipe, results: list[SplitResult], with_source: bool, log: Log = _noop
) -> None:
    """Write every split's documents (the ``documents`` config) with the recipe's shard settings."""
    features = document_features(with_source=with_source)
    for r in results:
        docs = r.documents
        table = docs.with_format("arrow")[:] if docs is not None and len(docs) else features.arrow_schema.empty_table()
        rel = write_documents(
            table, tmp, r.name, features, max_rows_per_shard=recipe.output.max_rows_per_shard,
            max_shard_bytes=recipe.output.max_shard_bytes, row_group_rows=recipe.output.row_group_rows,
        )
        log({"event": "wrote", "split": f"{r.name} (documents)", "shards": len(rel), "documents": table.num_rows})


def write_plots(tmp: Path, recipe: Recipe, results: list[SplitResult]) -> bool:
    """The card's figures under ``tmp/images`` when the recipe wants plots; returns whether a fill histogram was
    drawn (a fill histogram of full rows is one bar: drawn only when some row has room left)."""
    has_fill_plot = bool(recipe.output.plots) and not rows_all_full(results, recipe.packing.seq_len)
    if not recipe.output.plots:
        return has_fill_plot
    (tmp / IMAGES_DIR).mkdir()
    seq_len = recipe.packing.seq_len
    doc_bins = {r.name: (r.doc_bins if r.doc_bins else r.segment_bins) for r in results}
    caption, _ = doc_lengths_note(results)
    length_histogram_png(doc_bins, tmp / IMAGES_DIR / "doc_lengths.png", title=caption, seq_len=seq_len)
    if has_fill_plot:
        fill_histogram_png({r.name: r.fill_bins for r in results}, tmp / IMAGES_DIR / "fill_per_row.png", seq_len)
    return has_fill_plot


def _push(recipe: Recipe, out_dir: Path, log: Log) -> Any:
    if not recipe.hub.repo_id:
        raise ConfigError(f"{recipe.where}: hub.repo_id: set it to push (e.g. your-name/dataset-name)")
    log({"event": "push", "repo_id": recipe.hub.repo_id})
    return push_folder(
        str(out_dir), recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision,
        config_name=recipe.hub.config_name, commit_message=f"hfprep {__version__}: {recipe.name or out_dir.name}",
    )
