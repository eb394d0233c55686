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

from .configure import SplitResult, effective_tokenize_config
from .datasets_internals import arrow_table
from .describe import (
    build_card,
    card_split_stats,
    doc_lengths_note,
    loss_audit,
    make_summary,
    portable_recipe,
    reduce_chunks_advice,
    rows_all_full,
)
from .engines.ray_engine import refuse_documents
from .errors import ConfigError, DataError, warnings_scope
from .interrupts import handle_interrupts
from .mixture_run import run_mixture_splits
from .output.audit import LossAudit
from .output.documents import write_documents
from .output.hub import push_folder
from .output.layout import (
    CARD_NAME,
    DOCUMENTS_DIR,
    IMAGES_DIR,
    RECIPE_NAME,
    TOKENIZER_DIR,
    atomic_output,
    check_output,
    claim_output,
    hash_in_background,
)
from .output.meter import SplitMeter
from .output.plots import draw
from .output.shards import ShardWriter
from .recipe import Recipe, load_recipe
from .run_splits import run_source_splits
from .schema import document_features, output_is_padded
from .scratch import run_scope
from .source.loading import SourceSpec, resolve_source
from .tokenization.loading import eos_token_id, serialize_once
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
    # stops the pool instead of printing their tracebacks (and can no longer deadlock it); each warning once; the
    # tokenizer, not changed once loaded, serialized once (the fast backend and the fingerprint read the same text).
    with (
        handle_interrupts(), claim_output(out_dir, overwrite, run_inputs(recipe)), run_scope(), warnings_scope(),
        serialize_once(),
    ):
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
        if spec.kind in ("files", "text_dir"):
            hash_in_background(spec.paths)  # the card names them by sha256; hashed while the run works

    padded = output_is_padded(recipe.packing.strategy, recipe.packing.packing_kwargs)
    configs = mix.tokenize_configs() if mix is not None else [effective_tokenize_config(recipe)]
    with (
        atomic_output(out_dir, overwrite=overwrite, protect=protect) as tmp,
        SplitOutputs(tmp, recipe, padded, features=mix.features() if mix is not None else None,
                     threads=num_proc or 2,
                     make_audit=lambda info, pad_id: loss_audit(recipe, info.tokenizer, configs, pad_id)) as outputs,
    ):
        if mix is None:
            # Local files are packed straight into ``tmp`` (the direct engine); other sources give datasets.
            info, results = run_source_splits(recipe, spec, engine, num_proc, log, verbose, outputs=outputs)
        pad_id = outputs.pad_id(info)
        results, warnings = keep_written_splits(recipe, info, results, outputs, log)
        for r in results:
            r.quality = outputs.meters[r.name].report(r.pack_stats)
            # The card's table shows them too, and `hfprep validate` / `hfprep push` refuse the folder.
            for line in r.audit.lines(r.name) if r.audit is not None else ():
                warnings.append(line)
                log({"event": "warning", "warning": line})
        if recipe.output.documents:
            write_documents_config(tmp, recipe, results, with_source=mix is not None, log=log,
                                   written=set(outputs.documents_paths))
        backend_report = next((r.backend_report for r in results if r.backend_report), None)
        engine_line = f"{engine}" + (f", num_proc {num_proc}" if num_proc else "") + (", streaming" if spec.streaming else "")
        if info.bundle_dir:
            shutil.copytree(info.bundle_dir, tmp / TOKENIZER_DIR, ignore=shutil.ignore_patterns(".*"))
        has_fill_plot = write_plots(tmp, recipe, results)
        date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
        arrow_bytes = {r.name: outputs.arrow_bytes[r.name] for r in results}  # num_bytes (datasets' dataset_info)
        split_bytes = {r.name: outputs.parquet_bytes[r.name] for r in results}
        recipe_text = portable_recipe(recipe, info)  # the card shows it; the folder keeps it to re-run
        (tmp / RECIPE_NAME).write_text(recipe_text + "\n", encoding="utf-8")
        card = build_card(recipe, info, spec, results, arrow_bytes, pad_id, backend_report, engine_line, date,
                          download_bytes=split_bytes, has_fill_plot=has_fill_plot, recipe_text=recipe_text,
                          audit_rules=outputs.audit.rules if outputs.audit is not None else None)
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


class SplitOutputs:
    """Where a run's splits go: one :class:`~hfprep.output.shards.ShardWriter` per split under the output folder,
    each row group measured on its way (:class:`~hfprep.output.meter.SplitMeter`) for the card and the summary.

    The direct engine writes into :meth:`open` as it packs; splits an engine returned as a ``datasets.Dataset`` are
    written with :meth:`write_dataset`. Both give the same bytes for the same rows.
    """

    def __init__(
        self, folder: Path, recipe: Recipe, padded: bool, features=None, threads: int = 2,
        make_audit: Callable[[Any, int], LossAudit] | None = None, pad_id: int | None = None,
    ) -> None:
        self.folder = folder
        self.documents_writers: dict[str, ShardWriter] = {}
        self.documents_paths: dict[str, list[str]] = {}
        self.make_audit = make_audit
        self.audit: LossAudit | None = None  # the run's loss audit rules (each split gets a fresh audit of them)
        self.recipe = recipe
        self.padded = padded
        self.features = features if features is not None else tokenized_features()
        self.threads = max(1, threads)
        self.writers: dict[str, ShardWriter] = {}
        self.meters: dict[str, SplitMeter] = {}
        self.paths: dict[str, list[str]] = {}
        self.arrow_bytes: dict[str, int] = {}
        self.parquet_bytes: dict[str, int] = {}
        self._pad_id: int | None = pad_id  # a repack knows it from the source's card (it has no tokenizer)

    def __enter__(self) -> SplitOutputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # A failed or interrupted run: stop the writer threads (atomic_output removes the files).
        if exc_type is not None:
            for name, writer in self.writers.items():
                if name not in self.paths:
                    writer.abort()
            for name, writer in self.documents_writers.items():
                if name not in self.documents_paths:
                    writer.abort()

    def pad_id(self, info) -> int:
        """The padding id of the run: ``packing.pad_token_id``, else the tokenizer's eos."""
        if self._pad_id is None:
            p = self.recipe.packing.pad_token_id
            self._pad_id = p if p is not None else eos_token_id(info.tokenizer)
        return self._pad_id

    def open(self, name: str, info) -> ShardWriter:
        """The writer of split ``name`` (rows in output order), measured as it writes."""
        out = self.recipe.output
        if self.audit is None and self.make_audit is not None:
            self.audit = self.make_audit(info, self.pad_id(info))
        meter = self.meters[name] = SplitMeter(self.recipe.packing.seq_len, self.pad_id(info), self.padded,
                                               audit=self.audit.fresh() if self.audit is not None else None)
        writer = self.writers[name] = ShardWriter(
            self.folder, name, self.features, row_group_rows=out.row_group_rows,
            max_rows_per_shard=out.max_rows_per_shard, max_shard_bytes=out.max_shard_bytes, threads=self.threads,
            on_row_group=meter.add,
        )
        return writer

    def open_documents(self, name: str, with_source: bool = False) -> ShardWriter:
        """The writer of split ``name``'s documents config (documents in the order the packer reads them)."""
        out = self.recipe.output
        features = document_features(with_source=with_source)
        writer = self.documents_writers[name] = ShardWriter(
            self.folder, name, features, row_group_rows=out.row_group_rows, max_rows_per_shard=out.max_rows_per_shard,
            max_shard_bytes=out.max_shard_bytes, threads=self.threads, data_dir=DOCUMENTS_DIR,
        )
        writer.write(features.arrow_schema.empty_table())  # a split without documents still gets its (empty) shard
        return writer

    def close_documents(self, name: str) -> None:
        self.documents_paths[name] = self.documents_writers[name].close()

    def close(self, name: str) -> None:
        """Finish split ``name``'s shards; its sizes are then known."""
        writer = self.writers[name]
        self.paths[name] = writer.close()
        self.arrow_bytes[name] = writer.nbytes
        self.parquet_bytes[name] = sum((self.folder / p).stat().st_size for p in self.paths[name])

    def write_dataset(self, name: str, dataset, info) -> None:
        """Write a split an engine returned as a ``datasets.Dataset`` (its token columns, and ``source`` when the
        features have it)."""
        writer = self.open(name, info)
        if len(dataset):
            table = arrow_table(dataset).select(list(self.features))
            for batch in table.to_batches(max_chunksize=self.recipe.output.row_group_rows):
                writer.write(pa.Table.from_batches([batch]))
        self.close(name)

    def discard(self, name: str) -> None:
        """Remove what split ``name`` wrote (an empty split is not part of the output)."""
        for rel in self.paths.pop(name, []):
            (self.folder / rel).unlink(missing_ok=True)


def keep_written_splits(
    recipe: Recipe, info, results: list[SplitResult], outputs: SplitOutputs, log: Log
) -> tuple[list[SplitResult], list[str]]:
    """Write the splits engines returned as datasets, take every split's numbers from its meter, refuse a run whose
    first split packed no row and drop (with a warning) later splits that are empty."""
    for r in results:
        if r.name not in outputs.writers:
            outputs.write_dataset(r.name, r.dataset, info)
        elif r.name not in outputs.paths:
            outputs.close(r.name)
        meter = outputs.meters[r.name]
        r.out_stats, r.fill_bins, r.segment_bins = meter.stats, meter.fill_bins, meter.segment_bins
        if meter.audit is not None:
            r.audit = meter.audit.result(card_split_stats(r))
        log({"event": "wrote", "split": r.name, "shards": len(outputs.paths[r.name]),
             "bytes": outputs.parquet_bytes[r.name]})
    if results[0].out_stats.rows == 0:
        tokens_in = int(results[0].pack_stats.get("tokens_in", 0))
        raise DataError(
            f"packing produced no rows for split {results[0].name!r} ({tokens_in:,} tokens in, all dropped); "
            f"lower packing.seq_len ({recipe.packing.seq_len}) or use more source rows"
        )
    warnings = [f"split {r.name!r} is empty after packing; it is not written" for r in results[1:] if not r.out_stats.rows]
    for r in results[1:]:
        if not r.out_stats.rows:
            outputs.discard(r.name)
    results = [results[0]] + [r for r in results[1:] if r.out_stats.rows]
    advice = reduce_chunks_advice(recipe, results)
    if advice:
        warnings.append(advice)
        log({"event": "warning", "warning": advice})
    return results, warnings


def write_documents_config(
    tmp: Path, recipe: Recipe, results: list[SplitResult], with_source: bool, log: Log = _noop,
    written: set[str] = frozenset(),
) -> None:
    """Write every split's documents (the ``documents`` config) with the recipe's shard settings; ``written``: the
    splits whose documents an engine wrote already (the direct engine writes them as it packs)."""
    features = document_features(with_source=with_source)
    for r in results:
        if r.name in written:
            continue
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
    draw("length_histogram_png", doc_bins, tmp / IMAGES_DIR / "doc_lengths.png", title=caption, seq_len=seq_len)
    if has_fill_plot:
        draw("fill_histogram_png", {r.name: r.fill_bins for r in results}, tmp / IMAGES_DIR / "fill_per_row.png", seq_len)
    return has_fill_plot


def _push(recipe: Recipe, out_dir: Path, log: Log) -> Any:
    if not recipe.hub.repo_id:
        raise ConfigError(f"{recipe.where}: hub.repo_id: set it to push (e.g. your-name/dataset-name)")
    log({"event": "push", "repo_id": recipe.hub.repo_id})
    return push_folder(
        str(out_dir), recipe.hub.repo_id, private=recipe.hub.private, revision=recipe.hub.revision,
        config_name=recipe.hub.config_name, commit_message=f"hfprep {__version__}: {recipe.name or out_dir.name}",
    )
