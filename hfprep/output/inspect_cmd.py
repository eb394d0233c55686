"""``hfprep inspect``: schema, statistics and one decoded row with its segment boundaries.

Works on a prepared folder (reads the card and the shards) or a Hub repo id (through ``load_dataset``; offline
that is a clear :class:`~hfprep.errors.HubError`). The tokenizer used for decoding is, in order: ``tokenizer=``,
the ``tokenizer/`` folder bundled with the dataset, the card's tokenizer id; without one the ids are shown.

Example:
    >>> print(inspect_target("out/quickstart", row=0))  # doctest: +SKIP
    out/quickstart
    ...
    row 0 of 'train' (512 tokens): 2 segments, 0 padding
    -- segment 1: tokens 0..301 (302), loss on 302 ----------------------------------------
    ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import load_dataset

from ..errors import DataError, HfprepError, HubError
from ..schema import output_is_padded, padding_mask
from ..source.loading import require_hub
from ..tokenization.loading import load_tokenizer
from .card import read_card_metadata
from .layout import CARD_NAME, list_split_files
from .mixture_report import mixture_lines

MAX_SEGMENT_CHARS = 600
T = TypeVar("T")
NO_LOSS_OPEN, NO_LOSS_CLOSE = "\u2039", "\u203a"  # ‹ › around text that carries no loss


def _load_decoder(tokenizer: str | None, folder: Path | None, card_tok: str | None):
    candidates = []
    if tokenizer:
        candidates.append(tokenizer)
    if folder is not None and (folder / "tokenizer" / "tokenizer.json").is_file():
        candidates.append(str(folder / "tokenizer"))
    if card_tok and not card_tok.startswith(("tokenizer/", "local:")):
        candidates.append(card_tok)
    for c in candidates:
        try:
            return load_tokenizer(c), c
        except HfprepError:
            if c == tokenizer:
                raise
    return None, None


def _parquet(path: Path, read: Callable[[Path], T]) -> T:
    """``read(path)``, with a truncated or foreign file reported in one line naming it."""
    try:
        return read(path)
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(
            f"{path}: unreadable Parquet ({first}); the file is truncated or not Parquet: re-create the folder "
            "with `hfprep run` (`hfprep validate` lists every bad shard)"
        ) from None


def render_row(
    ids: np.ndarray,
    pos: np.ndarray,
    mask: np.ndarray,
    tokenizer=None,
    pad_token_id: int | None = None,
    padded: bool = True,
    max_chars: int = MAX_SEGMENT_CHARS,
) -> str:
    """A packed row as text: one header per segment (token range, loss count), decoded text, padding summary.

    Text without loss (prompts, FIM context) is shown between ‹ and ›.
    """
    ids = np.asarray(ids)
    pos = np.asarray(pos)
    mask = np.asarray(mask, dtype=np.bool_)
    pad = padding_mask(ids, pos, mask, np.array([0, len(ids)]), pad_token_id) if padded else np.zeros(len(ids), bool)
    real = np.flatnonzero(~pad)
    starts = [int(i) for i in real if pos[i] == 0 or i == 0]
    ends = [*starts[1:], int(real[-1]) + 1 if len(real) else 0]
    out = [f"{len(starts)} segment(s), {int(pad.sum())} padding token(s)"]
    for k, (a, b) in enumerate(zip(starts, ends)):
        head = f"-- segment {k + 1}: tokens {a}..{b - 1} ({b - a}), loss on {int(mask[a:b].sum())} "
        out.append(head + "-" * max(0, 88 - len(head)))
        if tokenizer is None:
            out.append(" ".join(str(int(t)) for t in ids[a:b][:200]) + (" ..." if b - a > 200 else ""))
            continue
        parts, i = [], a
        while i < b:
            j = i
            while j < b and mask[j] == mask[i]:
                j += 1
            text = tokenizer.decode(ids[i:j].tolist(), skip_special_tokens=False)
            parts.append(text if mask[i] else f"{NO_LOSS_OPEN}{text}{NO_LOSS_CLOSE}")
            i = j
        text = "".join(parts)
        if len(text) > max_chars:
            text = text[:max_chars] + f" ... ({len(text) - max_chars:,} more characters)"
        out.append(text)
    if pad.any():
        pad_ids = sorted({int(t) for t in ids[pad]})
        out.append(f"-- padding: {int(pad.sum())} token(s), id {pad_ids}, no loss " + "-" * 40)
    return "\n".join(out)


def inspect_folder(folder: str | os.PathLike, split: str | None = None, row: int = 0, tokenizer: str | None = None) -> dict[str, Any]:
    """Schema, card stats and one decoded row of a prepared folder, as a dict (``text`` holds the rendering)."""
    root = Path(folder)
    meta: dict[str, Any] = {}
    if (root / CARD_NAME).is_file():
        try:
            meta = read_card_metadata(root / CARD_NAME)
        except ValueError as e:
            raise DataError(f"{root / CARD_NAME}: {e}; re-create the folder with `hfprep run`") from None
    files = list_split_files(root)
    if not files:
        raise DataError(f"{root}: no data/<split>-XXXXX-of-YYYYY.parquet shards; is this a prepared dataset folder?")
    split = split or ("train" if "train" in files else sorted(files)[0])
    if split not in files:
        raise DataError(f"{root}: no split {split!r}; splits are {sorted(files)}")
    hf = meta.get("hfprep", {}) or {}
    tok_meta = hf.get("tokenizer", {}) or {}
    schema = _parquet(root / files[split][0], pq.read_schema)
    # Find the shard holding the requested row without reading the others.
    remaining = row
    for rel in files[split]:
        pf = _parquet(root / rel, pq.ParquetFile)
        if remaining < pf.metadata.num_rows:
            table = _parquet(root / rel, lambda _, pf=pf: pf.read()).slice(remaining, 1)
            break
        remaining -= pf.metadata.num_rows
    else:
        total = row - remaining
        raise DataError(f"split {split!r} has {total} rows; row {row} does not exist (use --row 0..{total - 1})")
    decoder, used = _load_decoder(tokenizer, root, tok_meta.get("name_or_path"))
    r = table.to_pylist()[0]
    rendered = render_row(
        np.array(r["input_ids"]), np.array(r["position_ids"]), np.array(r["loss_mask"]), decoder,
        tok_meta.get("pad_token_id"), output_is_padded(hf.get("packing"), hf.get("packing_kwargs")),
    )
    lines = [str(root), "", "schema:"]
    lines += [f"  {f.name}: {f.type}" for f in schema]
    lines += ["", "splits:"]
    stats = hf.get("stats", {}) or {}
    for s, rels in files.items():
        st = stats.get(s, {})
        extra = (
            f", {st.get('rows', 0):,} rows, {st.get('tokens', 0):,} tokens, fill {float(st.get('fill_ratio', 0)):.2%}"
            if st else ""
        )
        lines.append(f"  {s}: {len(rels)} shard(s){extra}")
    if hf:
        lines += [
            "",
            f"tokenizer: {tok_meta.get('name_or_path')} (vocab {tok_meta.get('vocab_size')}, eos "
            f"{tok_meta.get('eos_token_id')}, pad {tok_meta.get('pad_token_id')})",
            f"strategy {hf.get('strategy')}, packing {hf.get('packing')}, seq_len {hf.get('seq_len')}, "
            f"{hf.get('num_reduce_chunks')} reduce chunks",
        ]
    if hf.get("mixture"):
        lines += mixture_lines(hf["mixture"])
    lines += ["", f"row {row} of {split!r} ({len(r['input_ids'])} tokens"
              + (f", decoded with {used}" if used else ", ids only: no tokenizer available") + "): " + rendered]
    return {
        "target": str(root),
        "schema": {f.name: str(f.type) for f in schema},
        "splits": {s: len(v) for s, v in files.items()},
        "stats": stats,
        "row": r,
        "text": "\n".join(lines),
    }


def inspect_repo(repo_id: str, split: str | None = None, row: int = 0, tokenizer: str | None = None) -> dict[str, Any]:
    """Like :func:`inspect_folder` for a Hub dataset repo, read with ``load_dataset(..., streaming=True)``."""
    require_hub(f"inspect of {repo_id!r}", "inspect a local folder")
    try:
        ds = load_dataset(repo_id, split=split or "train", streaming=True)
        r = next(iter(ds.skip(row).take(1)))
    except StopIteration:
        raise DataError(f"{repo_id}: row {row} does not exist in split {split or 'train'!r}") from None
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise HubError(
            f"could not load {repo_id!r} from the Hub: {msg}; check the repo id, your network/HF_TOKEN, "
            "or pass a local folder"
        ) from e
    decoder, used = _load_decoder(tokenizer, None, None)
    rendered = render_row(np.array(r["input_ids"]), np.array(r["position_ids"]), np.array(r["loss_mask"]), decoder)
    lines = [repo_id, "", "schema:"] + [f"  {k}: {v}" for k, v in ds.features.items()]
    lines += ["", f"row {row} ({len(r['input_ids'])} tokens" + (f", decoded with {used}" if used else "") + "): " + rendered]
    return {"target": repo_id, "schema": {k: str(v) for k, v in ds.features.items()}, "row": r, "text": "\n".join(lines)}


def inspect_target(target: str, split: str | None = None, row: int = 0, tokenizer: str | None = None) -> dict[str, Any]:
    """A local folder when ``target`` exists on disk, else a Hub repo id."""
    if row < 0:
        raise DataError(f"--row must be >= 0, got {row}")
    if os.path.isdir(target):
        return inspect_folder(target, split, row, tokenizer)
    if os.path.exists(target) or target.count("/") > 1 or target.startswith((".", "/")):
        raise DataError(f"{target!r} is not a dataset folder (no such directory) nor a Hub repo id (user/name)")
    return inspect_repo(target, split, row, tokenizer)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in result.items() if k != "text"}, default=str)
