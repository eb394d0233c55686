"""``hfprep repack``: pack a prepared dataset's documents again, at another ``seq_len`` or with another packer,
without the tokenizer and without the source.

The ``documents`` config (:mod:`hfprep.output.documents`) holds every split's tokenized documents in the order the
packer reads them: ascending key ``array_hash(input_ids) % num_reduce_chunks``, input order inside a key. A repack
reads it shard by shard (a Hub repo is downloaded one shard at a time), recomputes each document's key from its
ids, cuts the stream into groups where the key changes and hands every group to the engine's own reduce
(:func:`hfprep.engines.mapreduce.reduce_groups` over the recipe's
:class:`~hfprep.pack.transform.PrepareForTrainingTransform`, built ``pack_only``), then the dense tails of all
groups to ``reduce_tails``: the same code, on the same groups, in the same order as ``hfprep run``, so the data
shards are byte-identical to a fresh run of the recipe with the new packing. The output is a full prepared folder
(the packed splits, the documents config, the bundled tokenizer, figures and a card that records
``repacked_from: {source, revision}``), written atomically.

**Mixtures** repack too: the documents' ``source`` goes to the mixture's reduce, which labels every packed token
with it, and the card's mixture table keeps what the source chose with what the new packing made of it.

**Keys.** The key count is the source's: a document's place inside its new group would be its input order, which
the documents config does not keep across keys, so another ``num_reduce_chunks`` is refused (re-run the recipe).

**Memory.** One group of documents at a time (the source run's ``reduce_memory_budget`` bounded every group) and
the record batch being read (at most an eighth of ``memory_budget``); ``memory_budget`` refuses, in one line, a
group that would hold more.

**Resume.** Every documents shard read is kept in ``.<output>.partial/`` (it becomes the output's documents
config) and recorded in its ``manifest.json`` (:mod:`hfprep.commands.staging`): a killed repack re-run with the same
arguments reads those shards from there instead of downloading them again, packs them again (the packed rows are
not kept aside: writing them costs more than packing them again) and ends with the same bytes.

Example:
    >>> summary = repack("out/quickstart", "out/quickstart-1024", seq_len=1024)  # doctest: +SKIP
    >>> summary["splits"]["train"]["rows"]  # doctest: +SKIP
    1110
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import inspect
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic
import yaml

from ..configure import TOKENIZER_DIR, RecordingTransform, SplitResult, split_stats_from, transform_config
from ..describe import repack_card_params
from ..engines.mapreduce import BYTES_PER_TOKEN_IN_GROUP, features_schema, reduce_groups, reduce_tails_into
from ..errors import ConfigError, DataError
from ..interrupts import handle_interrupts
from ..mixture_run import CHART, SOURCE_ID, MixtureTransform, mixture_features, repacked_mixture
from ..output.audit import AuditRules, LossAudit
from ..output.card import dump_yaml, render_dataset_card
from ..output.layout import CARD_NAME, DOCUMENTS_DIR, IMAGES_DIR, atomic_output, claim_output
from ..pack.keys import batch_keys
from ..pack.packers import get_packer
from ..prefetch import Prefetch
from ..recipe import PackingSection, Recipe, check_packing_strategy, parse_recipe
from ..run import SplitOutputs, keep_written_splits, write_plots
from ..schema import SOURCE_COLUMN, output_is_padded
from ..version import __version__
from .prepared import PreparedDataset, document_batches, documents_shard_name, open_prepared
from .staging import Staging

Log = Callable[[dict[str, Any]], None]
DEFAULT_MEMORY_BUDGET = 1 << 30
"""Bytes of documents (``BYTES_PER_TOKEN_IN_GROUP`` per token) a repack may hold at once: one group."""


def _noop(_: dict[str, Any]) -> None:
    return None


def repack(
    src: str | os.PathLike,
    output: str | os.PathLike,
    *,
    seq_len: int,
    strategy: str | None = None,
    packing_kwargs: Mapping[str, Any] | None = None,
    num_reduce_chunks: int | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    token: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Pack ``src``'s documents config again into the prepared folder ``output``; returns a summary dict.

    Args:
        src: a prepared folder or a Hub dataset repo id with a ``documents`` config (``output.documents: true``).
        output: the new folder (refused when it exists, unless ``overwrite``).
        seq_len: the new row length.
        strategy: the packer (default: the source's).
        packing_kwargs: the packer's options (default: the source's when the packer is the same, else none).
        num_reduce_chunks: must be the source's (or None); see the module docstring.
        revision: the Hub revision to read (resolved to one commit).
        memory_budget: bytes of documents held at once (one group; batches are read in an eighth of it); a bigger
            group is a one-line error.
        token: Hub token for a private repo (default: the logged-in one).
        log: called with progress events ``{"event": ...}``.

    The data shards equal those of ``hfprep run`` of the source's recipe with the new packing; the card records
    ``hfprep.repacked_from``.
    """
    log = log or _noop
    t0 = time.perf_counter()
    if memory_budget < 1:
        raise ConfigError(f"memory_budget must be >= 1 byte, got {memory_budget}")
    source = open_prepared(src, revision, token)
    shards = source.documents_shards()
    recipe = repacked_recipe(source, output, seq_len, strategy, packing_kwargs, num_reduce_chunks)
    transform = pack_only_transform(source, recipe)
    out_dir = Path(output)
    protect = [source.folder] if source.folder is not None else []
    identity = {"command": "repack", "source": source.where, "revision": source.revision,
                "packing": recipe.packing.model_dump(mode="json"), "version": __version__}
    log({"event": "source", "source": source.label, "splits": {s: len(p) for s, p in shards.items()}})
    with handle_interrupts(), claim_output(out_dir, overwrite, protect), Staging(out_dir, identity, overwrite) as staging:
        results, peak = _write_output(source, recipe, transform, shards, staging, out_dir, overwrite, protect,
                                      memory_budget, log)
        staging.remove()
    elapsed = time.perf_counter() - t0
    tokens_in = sum(int(r.pack_stats.get("tokens_in", 0)) for r in results)
    summary = {
        "output": str(out_dir),
        "source": source.label,
        "seq_len": recipe.packing.seq_len,
        "packing": recipe.packing.strategy,
        "packing_kwargs": dict(recipe.packing.packing_kwargs),
        "splits": {r.name: {"documents": int(r.pack_stats.get("docs_in", 0)), "tokens_in": int(r.pack_stats.get(
            "tokens_in", 0)), "rows": r.out_stats.rows, "fill_ratio": round(r.out_stats.fill_ratio, 6)}
            for r in results},
        "resumed": staging.resumed,
        "peak_document_bytes": peak,
        "elapsed_s": round(elapsed, 3),
        "tokens_per_s": round(tokens_in / elapsed, 1) if elapsed > 0 else None,
    }
    log({"event": "summary", **summary})
    return summary


def repacked_recipe(
    source: PreparedDataset, output: str | os.PathLike, seq_len: int, strategy: str | None,
    packing_kwargs: Mapping[str, Any] | None, num_reduce_chunks: int | None,
) -> Recipe:
    """The source's recipe (kept in its card) with the new packing and output folder."""
    hf = source.hfprep
    provenance = source.documents_block().get("provenance") or {}
    if "recipe" not in provenance:
        raise DataError(f"{source.where}: its card keeps no recipe (hfprep.documents.provenance.recipe); re-create it")
    data = yaml.safe_load(provenance["recipe"])
    old = dict(data.get("packing") or {})
    keys = int(hf.get("num_reduce_chunks", old.get("num_reduce_chunks", 4)))
    if num_reduce_chunks is not None and num_reduce_chunks != keys:
        raise ConfigError(
            f"--num-reduce-chunks {num_reduce_chunks}: a repack keeps the source's {keys} keys (a document's place "
            "in a new group is its input order, which the documents config does not keep across keys); re-run "
            "the recipe to change them"
        )
    new_strategy = strategy or hf.get("packing") or old.get("strategy", "dense")
    if packing_kwargs is None:
        packing_kwargs = hf.get("packing_kwargs") or {} if new_strategy == hf.get("packing") else {}
    data["packing"] = {**old, "seq_len": seq_len, "strategy": new_strategy, "num_reduce_chunks": keys,
                       "packing_kwargs": dict(packing_kwargs)}
    try:
        PackingSection.model_validate(data["packing"])
    except pydantic.ValidationError as e:  # one line naming the option, as the command line spells it
        first = e.errors()[0]
        raise ConfigError(f"--{str(first['loc'][0]).replace('_', '-')}: {first['msg']}") from None
    data.setdefault("output", {})["folder"] = Path(output).name
    recipe = parse_recipe(data, f"{source.where} (its recipe)")
    recipe.text = dump_yaml(data)
    recipe.output.folder = str(Path(output).absolute())
    check_packing_strategy(recipe)
    try:
        inspect.signature(get_packer(new_strategy)).bind(None, None, None, None, seq_len, None, **packing_kwargs)
    except TypeError as e:
        raise ConfigError(f"--packing-kwargs {json.dumps(dict(packing_kwargs))}: {e} (packer {new_strategy!r})") from None
    return recipe


def pack_only_transform(source: PreparedDataset, recipe: Recipe) -> RecordingTransform:
    """The recipe's transform, reduce side only: no tokenizer loaded, the pad id from the source's card (a
    mixture's transform, which labels every packed token with its source, for a mixture)."""
    tok = source.hfprep.get("tokenizer") or {}
    if tok.get("pad_token_id") is None:
        raise DataError(f"{source.where}/{CARD_NAME}: the card gives no pad id for the tokenizer; re-create the dataset")
    cfg = transform_config(recipe, str(tok.get("name_or_path") or "unknown"))
    cfg = cfg.model_copy(update={"pad_token_id": int(tok["pad_token_id"])})
    mixture = source.hfprep.get("mixture")
    if mixture is not None:
        return MixtureTransform(cfg, None, len(mixture["sources"]), recipe.source_column, pack_only=True)
    return RecordingTransform(cfg, pack_only=True)


# ----------------------------------------------------------------------------------------------- one split


@dataclass
class _Docs:
    """Documents of one key cut from a record batch: ``table`` (the slice, for its other columns) and its flat
    arrays (views into the batch): lengths, ids, and the loss mask (None when every token has loss)."""

    table: pa.Table
    lengths: np.ndarray
    ids: np.ndarray
    mask: np.ndarray | None


def _flat(table: pa.Table, where: str, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A documents batch's lengths, flat ids and flat loss mask (None when all true), without copying the ids."""
    ids = _one_chunk(table.column("input_ids"))
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    mask_col = _one_chunk(table.column("loss_mask"))
    mask_lengths = pc.list_value_length(mask_col).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(mask_lengths != lengths)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{where} row {row + i}: loss_mask has {int(mask_lengths[i])} values for {int(lengths[i])} "
                        "input_ids; re-create the dataset")
    flat_ids = pc.list_flatten(ids).to_numpy(zero_copy_only=False)
    mask = pc.list_flatten(mask_col).to_numpy(zero_copy_only=False)
    return lengths, flat_ids, None if mask.all() else mask


def _one_chunk(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


class _Groups:
    """Documents in the documents config's order -> ``(key, tokenized rows)`` groups, cut where the key changes.

    The key of every document is recomputed from its ids (``batch_keys``); keys must never decrease (else the file
    is not in the order the packer reads, and the repack would differ from a fresh run: a one-line error). A group's
    rows are built from the flat ids as the direct engine builds them (``documents_to_rows``). The group still open
    at the end of a shard goes on in the next shard.
    """

    def __init__(self, transform: RecordingTransform, budget: int) -> None:
        self.num_keys = transform.config.num_reduce_chunks
        self.to_rows = transform.documents_to_rows
        self.budget = budget
        self.key: int | None = None
        self.parts: list[_Docs] = []
        self.tokens = 0
        self.peak_bytes = 0

    def read(self, path: Path, where: str) -> Iterator[tuple[int, pa.Table]]:
        """The groups that end inside the Parquet file ``path`` (``where`` names it in errors)."""
        # A batch holds at most an eighth of the budget; the next one is decoded while this one is packed.
        reader = Prefetch(document_batches(path, self.budget // 4), ahead=1).start()
        try:
            yield from self._read(reader, where)
        finally:
            reader.close()

    def _read(self, batches: Iterable[pa.Table], where: str) -> Iterator[tuple[int, pa.Table]]:
        row = 0
        for table in batches:
            lengths, ids, mask = _flat(table, where, row)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            keys = batch_keys(ids, offsets, self.num_keys)
            before = np.concatenate([[self.key if self.key is not None else -1], keys[:-1]])
            down = np.flatnonzero(keys < before)
            if len(down):
                raise DataError(
                    f"{where} row {row + int(down[0])}: key {keys[down[0]]} after {before[down[0]]}; the documents "
                    "are not in the order the packer reads them (was the file changed?): re-create the dataset"
                )
            starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(keys)]):
                key = int(keys[a])
                if key != self.key and self.parts:
                    yield self.key, self._take()
                self.key = key
                lo, hi = int(offsets[a]), int(offsets[b])
                self.parts.append(_Docs(table.slice(a, b - a), lengths[a:b], ids[lo:hi],
                                        None if mask is None else mask[lo:hi]))
                self.tokens += hi - lo
                held = self.tokens * BYTES_PER_TOKEN_IN_GROUP
                self.peak_bytes = max(self.peak_bytes, held)
                if held > self.budget:
                    raise ConfigError(
                        f"{where}: the group of key {key} holds over {self.budget:,} bytes of documents, the memory "
                        f"budget; raise it (--memory-budget {2 * held}): a repack keeps the source's keys"
                    )
            row += table.num_rows

    def _take(self) -> pa.Table:
        parts, self.parts, self.tokens = self.parts, [], 0
        lengths = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = parts[0].ids if len(parts) == 1 else np.concatenate([p.ids for p in parts])
        mask = None
        if any(p.mask is not None for p in parts):
            mask = np.concatenate([p.mask if p.mask is not None else np.ones(len(p.ids), np.bool_) for p in parts])
        group = self.to_rows(offsets, ids, mask)
        if SOURCE_COLUMN in parts[0].table.column_names:  # a mixture's documents: the source index its reduce reads
            source = pa.concat_arrays([c for p in parts for c in p.table.column(SOURCE_COLUMN).chunks])
            group = group.append_column(SOURCE_ID, _chunked_like(source, group.column("input_ids")))
        return group

    def finish(self) -> Iterator[tuple[int, pa.Table]]:
        """The last group of the split."""
        if self.parts:
            yield self.key, self._take()


def _chunked_like(values: pa.Array, like: pa.ChunkedArray) -> pa.ChunkedArray:
    """``values`` (one per row) cut into the chunks of ``like``: the packers walk all columns chunk by chunk."""
    bounds = np.cumsum([0] + [len(c) for c in like.chunks]).tolist()
    return pa.chunked_array([values.slice(a, b - a) for a, b in itertools.pairwise(bounds)], values.type)


@dataclass
class _SplitParts:
    """A split's repack: its merged stats and counts (its rows went to the output's writer as they were packed)."""

    name: str
    stats: list[Any]
    rows_in: int | None
    peak_bytes: int = 0

    def result(self, transform: RecordingTransform) -> SplitResult:
        """The split as ``hfprep run`` hands it to the card (merged stats, document-length bins)."""
        transform.last_stats = self.stats
        transform.rows_in = self.rows_in if self.rows_in is not None else 0
        stats, bins = split_stats_from(transform.stats)
        return SplitResult(self.name, None, stats, bins, self.rows_in)


def _repack_split(
    source: PreparedDataset, split: str, rels: list[str], transform: RecordingTransform, staging: Staging,
    budget: int, write: Callable[[pa.Table], None], log: Log,
) -> _SplitParts:
    """Pack one split's documents shard by shard; the packed rows go to ``write`` in output order.

    Every shard read is kept in the staging folder (it becomes the output's documents config) and recorded in the
    manifest: a re-run after a kill reads the recorded shards from there instead of downloading them again, and
    packs them again (packing is deterministic and cheaper than keeping the packed rows aside on every run).
    """
    finished = len(staging.done(split))
    groups = _Groups(transform, budget)
    stats: list[Any] = []
    tails: list[pa.Table] = []
    doc_dir = staging.file(DOCUMENTS_DIR)
    doc_dir.mkdir(exist_ok=True)
    for i, rel in enumerate(rels):
        kept = doc_dir / documents_shard_name(rel)
        fetched = contextlib.nullcontext(kept) if i < finished else source.fetch(rel, staging.file("download"))
        with fetched as path:
            shard_stats, shard_tails = reduce_groups(transform, groups.read(path, rel), write)
            if i >= finished:
                _keep(source, path, kept)
        stats += shard_stats
        tails += shard_tails
        if i >= finished:
            staging.finish_shard(split, {"shard": i, "name": rel})
        log({"event": "shard", "split": split, "shard": f"{i + 1}/{len(rels)}"})
    # The split's last group, then the final pass over every group's tail (key order), as the engines do.
    last_stats, last_tails = reduce_groups(transform, groups.finish(), write)
    stats += last_stats
    reduce_tails_into(transform, tails + last_tails, write, stats)
    card_stats = (source.hfprep.get("stats") or {}).get(split) or {}
    rows_in = int(card_stats["rows_in"]) if "rows_in" in card_stats else None
    return _SplitParts(split, stats, rows_in, groups.peak_bytes)


def _keep(source: PreparedDataset, path: Path, dest: Path) -> None:
    """A documents shard into the output's documents config: a hard link (or copy) of a local source's file, the
    downloaded file itself for a Hub source. hfprep never rewrites a shard in place, so a link is safe."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    if source.folder is None:
        os.replace(path, dest)
        return
    try:
        os.link(path, tmp)
    except OSError:  # another file system, or links not allowed there
        shutil.copyfile(path, tmp)
    os.replace(tmp, dest)


# ----------------------------------------------------------------------------------------------- the output


def _write_output(
    source: PreparedDataset, recipe: Recipe, transform: RecordingTransform, shards: dict[str, list[str]],
    staging: Staging, out_dir: Path, overwrite: bool, protect: list[Any], memory_budget: int, log: Log,
) -> tuple[list[SplitResult], int]:
    """The prepared folder, as ``hfprep run`` writes it: packed splits (written while they are packed), documents
    config, tokenizer, figures, card. Returns the splits and the most bytes of documents held at once."""
    pad_id = int(source.hfprep["tokenizer"]["pad_token_id"])
    is_mixture = source.hfprep.get("mixture") is not None
    padded = output_is_padded(recipe.packing.strategy, recipe.packing.packing_kwargs)
    audit_rules = source.hfprep.get("loss_audit")
    p = recipe.packing

    def make_audit(_info, pad: int) -> LossAudit:  # the source's rules, the new packing
        return LossAudit(AuditRules.from_card(audit_rules), seq_len=p.seq_len, packing=p.strategy,
                         packing_kwargs=p.packing_kwargs, num_reduce_chunks=p.num_reduce_chunks, pad_token_id=pad)

    with (
        atomic_output(out_dir, overwrite=overwrite, protect=protect) as tmp,
        SplitOutputs(tmp, recipe, padded, features=mixture_features(recipe) if is_mixture else None, pad_id=pad_id,
                     make_audit=make_audit if audit_rules is not None else None) as outputs,
    ):
        results, peak = [], 0
        # The packed rows as `hfprep run` hands them to its writer: the transform's schema, the output's columns.
        schema, columns = features_schema(transform.output_features()), list(outputs.features)
        for split, rels in shards.items():
            writer = outputs.open(split, None)
            packed = _repack_split(source, split, rels, transform, staging, memory_budget,
                                   lambda t, w=writer: w.write(t.select(schema.names).cast(schema).select(columns)), log)
            peak = max(peak, packed.peak_bytes)
            results.append(packed.result(transform))
        mix = repacked_mixture(recipe, source.meta, results) if is_mixture else None
        results, _ = keep_written_splits(recipe, None, results, outputs, log)
        for r in results:
            r.quality = outputs.meters[r.name].report(r.pack_stats)
        split_bytes = {r.name: outputs.parquet_bytes[r.name] for r in results}
        (tmp / DOCUMENTS_DIR).mkdir()
        for path in sorted(staging.file(DOCUMENTS_DIR).iterdir()):
            os.link(path, tmp / DOCUMENTS_DIR / path.name)  # the staging folder is next to the output: same file system
        _copy_tokenizer(source, tmp)
        has_fill_plot = write_plots(tmp, recipe, results)
        date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d")
        arrow_bytes = {r.name: outputs.arrow_bytes[r.name] for r in results}
        params = repack_card_params(
            source.meta, recipe, results, arrow_bytes, pad_id, date, download_bytes=split_bytes,
            has_fill_plot=has_fill_plot, repacked_from=repacked_from(source),
        )
        card = render_dataset_card(params)
        if mix is not None:
            if recipe.output.plots:
                mix.write_chart(tmp / IMAGES_DIR / CHART)
            card = mix.card(card, with_chart=recipe.output.plots)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
    return results, peak


def repacked_from(source: PreparedDataset) -> dict[str, str]:
    """What the card records of the source: a Hub repo by its id and commit; a local folder by the sha256 of its card
    (which names every shard's content), never by its path (the card travels, a path does not)."""
    return {"source": source.repo_id if source.folder is None else LOCAL_SOURCE, "revision": source.revision}


LOCAL_SOURCE = "a local folder"


def _copy_tokenizer(source: PreparedDataset, tmp: Path) -> None:
    """The tokenizer bundled with the source (``tokenizer/``), bundled again with the repack."""
    prefix = f"{source.extra_prefix()}{TOKENIZER_DIR}/"
    for rel in (f for f in source.files if f.startswith(prefix)):
        dest = tmp / TOKENIZER_DIR / rel[len(prefix):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        with source.fetch(rel, tmp / ".download") as path:
            shutil.copyfile(path, dest)
    shutil.rmtree(tmp / ".download", ignore_errors=True)


def format_repack_summary(summary: Mapping[str, Any]) -> str:
    """The lines ``hfprep repack`` prints."""
    lines = [
        f"hfprep repack: {summary['source']} -> {summary['output']}",
        f"  packing   {summary['packing']}, seq_len {summary['seq_len']}"
        + (f", {summary['packing_kwargs']}" if summary["packing_kwargs"] else ""),
    ]
    for name, s in summary["splits"].items():
        lines.append(f"  {name:<12}{s['documents']:>12,} documents {s['tokens_in']:>14,} tokens -> "
                     f"{s['rows']:>10,} rows, fill {s['fill_ratio']:.2%}")
    tps = summary.get("tokens_per_s")
    lines.append(f"  time: {summary['elapsed_s']:.1f} s" + (f", {tps:,.0f} tokens/s" if tps else "")
                 + (" (resumed)" if summary.get("resumed") else ""))
    return "\n".join(lines)


__all__ = ["DEFAULT_MEMORY_BUDGET", "format_repack_summary", "pack_only_transform", "repack", "repacked_recipe"]
