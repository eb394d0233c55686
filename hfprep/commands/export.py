"""``hfprep export``: a prepared dataset's documents config as the files other trainers memory-map.

* ``megatron``: Megatron-LM / NeMo's indexed dataset, ``PREFIX.bin`` + ``PREFIX.idx``, one sequence per document,
  in the dtype megatron-core picks for the vocabulary (:mod:`hfprep.output.megatron`); train with
  ``--data-path PREFIX``. Megatron's indexed dataset carries no loss mask (its GPT dataset puts the loss on every
  token, and its SFT dataset reads JSON Lines conversations and tokenizes them itself), so documents with tokens
  outside the loss (SFT, FIM with ``only_middle_not_masked``) are refused in one line rather than trained on.
* ``flat``: the token ids end to end as the packed rows lay them (each document ends with its eos, the
  separator), uint16 when the vocabulary fits, else uint32: ``PREFIX.bin``, the layout OLMo- and nanoGPT-style
  trainers memory-map (``np.memmap(PREFIX.bin, dtype, mode="r")``); ``PREFIX.json`` says dtype, vocabulary
  size, separator id, document and token counts, source and revision; documents with tokens outside the loss add
  ``PREFIX.mask.bin`` (one bool per token, aligned with the ids: the layout of OLMo's ``label_mask_paths``).

Both read the documents shard by shard (a Hub repo is downloaded one shard at a time, then deleted) in batches
bounded by ``memory_budget``, and are resumable: each finished shard is recorded in ``.<name>.partial`` next to
the output (:mod:`hfprep.commands.staging`), a killed export re-run continues there with the same bytes, and the
output files appear at the end (the ``.idx`` / ``.json`` last: their presence means the export is complete).

Example:
    >>> summary = export("out/quickstart", "out/megatron/train", format="megatron")  # doctest: +SKIP
    >>> summary["documents"], summary["dtype"]  # doctest: +SKIP
    (288, 'uint16')
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc

from ..errors import ConfigError, DataError, OutputExistsError
from ..interrupts import handle_interrupts
from ..output.layout import output_errors, output_lock
from ..output.megatron import megatron_dtype, write_index
from ..version import __version__
from .prepared import PreparedDataset, document_batches, open_prepared
from .staging import Staging

Log = Callable[[dict[str, Any]], None]
Format = Literal["megatron", "flat"]
FORMATS = ("megatron", "flat")
DEFAULT_MEMORY_BUDGET = 256 * 2**20
"""Bytes of documents an export holds at once (one batch of a shard)."""


def _noop(_: dict[str, Any]) -> None:
    return None


def flat_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """uint16 when every id fits (a vocabulary of at most 65,536), else uint32.

    Example:
        >>> flat_dtype(50_257).__name__, flat_dtype(151_936).__name__
        ('uint16', 'uint32')
    """
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def output_files(prefix: str | os.PathLike, format: Format) -> dict[str, Path]:
    """The files an export writes: ``bin`` (ids), then ``mask`` (flat, when needed), then ``index`` (written
    last: the ``.idx`` of Megatron, the ``.json`` of flat).

    Example:
        >>> sorted(p.name for p in output_files("out/train", "megatron").values())
        ['train.bin', 'train.idx']
    """
    prefix = Path(prefix)
    files = {"bin": prefix.with_name(prefix.name + ".bin")}
    if format == "flat":
        files["mask"] = prefix.with_name(prefix.name + ".mask.bin")
        files["index"] = prefix.with_name(prefix.name + ".json")
    else:
        files["index"] = prefix.with_name(prefix.name + ".idx")
    return files


def export(
    src: str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: Format,
    split: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    token: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Export one split of ``src``'s documents config to files named after the prefix ``output``; returns a summary.

    Args:
        src: a prepared folder or a Hub dataset repo id with a ``documents`` config.
        output: the prefix: ``PREFIX.bin`` + ``PREFIX.idx`` (megatron) or ``PREFIX.bin`` + ``PREFIX.json`` (flat).
        format: ``megatron`` or ``flat``.
        split: the split (default: the first, i.e. the train split).
        revision: the Hub revision to read (resolved to one commit).
        overwrite: replace existing output files.
        memory_budget: bytes of documents held at once (one batch).
        token: Hub token for a private repo.
        log: called with progress events.
    """
    log = log or _noop
    t0 = time.perf_counter()
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {list(FORMATS)}")
    if memory_budget < 1:
        raise ConfigError(f"memory_budget must be >= 1 byte, got {memory_budget}")
    source = open_prepared(src, revision, token)
    shards = source.documents_shards()
    split = split or next(iter(shards))
    if split not in shards:
        raise ConfigError(f"--split {split!r}: {source.where} has documents for {list(shards)}")
    hf = source.hfprep
    tok = hf.get("tokenizer") or {}
    vocab, eos = tok.get("vocab_size"), tok.get("eos_token_id")
    if not isinstance(vocab, int) or not isinstance(eos, int):
        raise DataError(f"{source.where}: its card gives no vocabulary size or eos id for the tokenizer; re-create it")
    if format == "megatron" and hf.get("strategy") == "sft":
        raise DataError(_MEGATRON_NO_MASK.format(what="SFT documents carry a loss mask"))
    dtype = megatron_dtype(vocab) if format == "megatron" else flat_dtype(vocab)
    files = output_files(output, format)
    final = Path(output)
    identity = {"command": "export", "format": format, "source": source.where, "revision": source.revision,
                "split": split, "version": __version__}
    with handle_interrupts(), output_lock(final):
        existing = [str(p) for p in files.values() if p.exists()]
        if existing and not overwrite:
            raise OutputExistsError(f"output {existing[0]!r} already exists; pass --overwrite (or pick another prefix)")
        with Staging(final, identity, overwrite) as staging:
            written = _export_shards(source, shards[split], split, format, dtype, vocab, eos, staging, memory_budget,
                                     log)
            summary = _publish(source, staging, split, format, dtype, vocab, eos, files, written)
            staging.remove()
    elapsed = time.perf_counter() - t0
    summary.update(elapsed_s=round(elapsed, 3), resumed=staging.resumed,
                   tokens_per_s=round(summary["tokens"] / elapsed, 1) if elapsed > 0 else None)
    log({"event": "summary", **summary})
    return summary


_MEGATRON_NO_MASK = (
    "megatron export refused: {what}, and Megatron's indexed dataset holds none (its GPT dataset trains on every "
    "token; its SFT dataset reads JSON Lines conversations, not an indexed dataset); use --format flat (writes "
    "PREFIX.mask.bin) or train with hfprep's collator"
)


def _export_shards(
    source: PreparedDataset, rels: list[str], split: str, format: Format, dtype, vocab: int, eos: int,
    staging: Staging, budget: int, log: Log,
) -> list[dict[str, Any]]:
    """Append every shard's ids (and loss mask) to the staging files; returns the shards' records."""
    done = staging.done(split)
    ids_path, mask_path = staging.file("ids.bin"), staging.file("mask.bin")
    with output_errors(staging.final):
        for path, size in ((ids_path, done[-1]["ids_bytes"] if done else 0),
                           (mask_path, done[-1]["mask_bytes"] if done else 0)):
            with open(path, "ab") as f:  # a killed run may have written past its last recorded shard
                f.truncate(size)
    for i, rel in enumerate(rels):
        if i < len(done):
            continue
        lengths, masked, ends = [], 0, 0
        with source.fetch(rel, staging.file("download")) as path, open(ids_path, "ab") as ids_f, \
                open(mask_path, "ab") as mask_f:
            for ids, mask, lens in _batches(path, budget):
                ends += int((ids[np.cumsum(lens)[lens > 0] - 1] == eos).sum())
                bad = np.flatnonzero(ids >= vocab)
                if len(bad):
                    raise DataError(f"{rel}: token id {ids[bad[0]]} >= vocabulary size {vocab} in the card")
                if not mask.all():
                    if format == "megatron":
                        staging.remove()
                        raise DataError(_MEGATRON_NO_MASK.format(what=f"{rel} has tokens outside the loss"))
                    masked += int((~mask).sum())
                ids_f.write(ids.astype(dtype).tobytes())
                mask_f.write(mask.tobytes())
                lengths.append(lens)
            ids_f.flush()
            mask_f.flush()
            os.fsync(ids_f.fileno())
            os.fsync(mask_f.fileno())
            ids_bytes, mask_bytes = ids_f.tell(), mask_f.tell()
        lens_all = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        np.save(staging.file(f"lengths-{i:05d}.npy"), lens_all.astype(np.int64))
        staging.finish_shard(split, {"shard": i, "name": rel, "ids_bytes": ids_bytes, "mask_bytes": mask_bytes,
                                     "documents": len(lens_all), "tokens": int(lens_all.sum()), "masked": masked,
                                     "ending_with_separator": ends})
        log({"event": "shard", "split": split, "shard": f"{i + 1}/{len(rels)}", "documents": len(lens_all)})
    return staging.done(split)


def _batches(path: Path, budget: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(flat ids, flat loss mask, document lengths)`` of a documents shard, batch by batch."""
    for batch in document_batches(path, budget, columns=["input_ids", "loss_mask"]):
        ids_col, mask_col = batch.column("input_ids"), batch.column("loss_mask")
        lens = pc.list_value_length(ids_col).to_numpy(zero_copy_only=False).astype(np.int64)
        ids = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in ids_col.chunks] or [np.zeros(0)])
        mask = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in mask_col.chunks] or [np.zeros(0)])
        yield ids.astype(np.uint32, copy=False), mask.astype(np.bool_, copy=False), lens


def _publish(
    source: PreparedDataset, staging: Staging, split: str, format: Format, dtype, vocab: int, eos: int,
    files: dict[str, Path], records: list[dict[str, Any]],
) -> dict[str, Any]:
    """Move the finished files into place: the old index first out of the way, the ids, the mask, the index last."""
    count = len(records)
    lengths = lambda: (np.load(staging.file(f"lengths-{i:05d}.npy")) for i in range(count))  # noqa: E731
    documents = sum(r["documents"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    masked = sum(r["masked"] for r in records)
    index_tmp = staging.file("index")
    summary: dict[str, Any] = {
        "format": format, "output": str(files["bin"]), "source": source.where, "revision": source.revision,
        "split": split, "dtype": np.dtype(dtype).name, "vocab_size": vocab, "documents": documents, "tokens": tokens,
    }
    with output_errors(staging.final):
        if format == "megatron":
            write_index(index_tmp, dtype, lengths)
        else:
            sidecar = {
                "format": "hfprep flat token file",
                "dtype": np.dtype(dtype).name,
                "vocab_size": vocab,
                "separator_id": eos,
                "separator": "every document ends with it, as in the packed rows (documents laid end to end)",
                "documents_ending_with_separator": sum(r["ending_with_separator"] for r in records),
                "documents": documents,
                "tokens": tokens,
                "loss_mask": files["mask"].name if masked else None,
                "tokens_without_loss": masked,
                "source": source.where,
                "revision": source.revision,
                "split": split,
                "hfprep_version": __version__,
            }
            index_tmp.write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
            summary.update(separator_id=eos, loss_mask=sidecar["loss_mask"])
        files["index"].parent.mkdir(parents=True, exist_ok=True)
        files["index"].unlink(missing_ok=True)  # no index names half-replaced files while they move
        os.replace(staging.file("ids.bin"), files["bin"])
        if format == "flat":
            if masked:
                os.replace(staging.file("mask.bin"), files["mask"])
            else:
                files["mask"].unlink(missing_ok=True)
        os.replace(index_tmp, files["index"])
    summary["files"] = [str(p) for k, p in files.items() if p.exists()]
    return summary


def format_export_summary(summary: dict[str, Any]) -> str:
    """The lines ``hfprep export`` prints."""
    lines = [
        f"hfprep export ({summary['format']}): {summary['source']}@{summary['revision']} split {summary['split']}",
        f"  {summary['documents']:,} documents, {summary['tokens']:,} tokens, {summary['dtype']} ids",
        *[f"  wrote {f}" for f in summary["files"]],
    ]
    tps = summary.get("tokens_per_s")
    lines.append(f"  time: {summary['elapsed_s']:.1f} s" + (f", {tps:,.0f} tokens/s" if tps else "")
                 + (" (resumed)" if summary.get("resumed") else ""))
    return "\n".join(lines)


__all__ = ["DEFAULT_MEMORY_BUDGET", "FORMATS", "export", "flat_dtype", "format_export_summary", "output_files"]
