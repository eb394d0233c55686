"""``hfprep inspect``: schema, statistics, the packing report and one decoded row with its segment boundaries, for a
prepared folder or a Hub dataset repo alike.

Both are read through :mod:`hfprep.output.dataset_files`: the card (the config's stats, and the packing report they
tell: fill, segments per row, tokens lost by reason), the config's shards (:func:`hfprep.output.hub.config_splits`),
the footer and the one row group of the shard that holds the row (on the Hub: range requests, no other shard is
fetched) and the tokenizer bundled with the rows (``tokenizer/`` or ``<config>/tokenizer/``; a repo's is copied to a
scratch folder and removed after loading). ``report=True`` reads every row of the split for the full packing report
(segment counts and lengths); on the Hub that downloads the split's shards, into memory only.

A target is a folder or a Hub repo id (``user/name``), either one optionally followed by ``:CONFIG`` (or pass
``config=``); ``revision=`` picks a Hub branch, tag or commit. The tokenizer used for decoding is, in order:
``tokenizer=``, the bundled one, the card's tokenizer id; without one the ids are shown.

Example:
    >>> print(inspect_target("out/quickstart", row=0)["text"])  # doctest: +SKIP
    out/quickstart
    ...
    row 0 of 'train' (512 tokens, decoded with out/quickstart/tokenizer): 2 segment(s), 0 padding token(s)
    -- segment 1: tokens 0..301 (302), loss on 302 ----------------------------------------
    ...
    >>> inspect_target("me/quickstart:code", revision="v1")["config"]  # doctest: +SKIP
    'code'
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError, HfprepError
from ..schema import output_is_padded, padding_mask
from ..source.loading import require_hub
from ..tokenization.loading import load_tokenizer, looks_like_path
from .card import hfprep_block, parse_card_metadata
from .dataset_files import DatasetFiles, HubFiles, LocalFiles
from .hub import config_names, config_prefix, config_splits
from .layout import CARD_NAME, DEFAULT_CONFIG
from .mixture_report import mixture_lines
from .quality import format_report, format_stats_report, packing_report

MAX_SEGMENT_CHARS = 600
T = TypeVar("T")
NO_LOSS_OPEN, NO_LOSS_CLOSE = "\u2039", "\u203a"  # ‹ › around text that carries no loss
ROW_COLUMNS = ["input_ids", "position_ids", "loss_mask"]


def _bundled_tokenizer(listing: list[str], config: str, tok_meta: dict[str, Any]) -> str | None:
    """The folder of the tokenizer bundled with ``config``'s rows, the first that holds a ``tokenizer.json`` of: the
    card's ``subfolder`` as the repo names it or below the config's folder (a push puts a non-default config's files
    under ``<config>/``), then ``<config>/tokenizer``. Never a folder of another config."""
    prefix = config_prefix(config)
    sub = tok_meta.get("subfolder")
    names = [sub.strip("/"), f"{prefix}{sub.strip('/')}"] if isinstance(sub, str) and sub.strip("/") else []
    names.append(f"{prefix}tokenizer")
    files = set(listing)
    return next((n for n in names if n.startswith(prefix) and f"{n}/tokenizer.json" in files), None)


def _load_decoder(
    tokenizer: str | None, files: DatasetFiles, listing: list[str], config: str, tok_meta: dict[str, Any]
) -> tuple[Any, str | None]:
    if tokenizer:
        return load_tokenizer(tokenizer, key="--tokenizer"), tokenizer
    bundled = _bundled_tokenizer(listing, config, tok_meta)
    if bundled is not None:
        with files.folder(bundled) as local:
            try:
                return load_tokenizer(str(local)), files.where(bundled)
            except HfprepError:
                pass
    name = tok_meta.get("name_or_path")
    # A bundled tokenizer's card entry names the dataset (with a subfolder), not a tokenizer: never ask for it.
    if isinstance(name, str) and "subfolder" not in tok_meta and not name.startswith(("tokenizer/", "local:")):
        try:
            return load_tokenizer(name, revision=tok_meta.get("revision")), name
        except HfprepError:
            pass
    return None, None


def _parquet(where: str, read: Callable[[], T]) -> T:
    """``read()``, with a truncated or foreign file reported in one line naming it."""
    try:
        return read()
    except (pa.ArrowException, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(
            f"{where}: unreadable Parquet ({first}); the file is truncated or not Parquet: re-create the folder "
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


def _read_row(files: DatasetFiles, shards: list[str], row: int, split: str) -> tuple[pa.Schema, dict[str, Any]]:
    """The schema and row ``row`` of a split: the footers of the shards before it, then one row group only."""
    remaining = row
    for rel in shards:
        where = files.where(rel)
        with files.open(rel) as f:
            pf = _parquet(where, lambda f=f: pq.ParquetFile(f))
            meta = pf.metadata
            if remaining >= meta.num_rows:
                remaining -= meta.num_rows
                continue
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if remaining < n:
                    table = _parquet(where, lambda pf=pf, g=g: pf.read_row_group(g, columns=ROW_COLUMNS))
                    return pf.schema_arrow, table.slice(remaining, 1).to_pylist()[0]
                remaining -= n
    total = row - remaining
    raise DataError(f"split {split!r} has {total} rows; row {row} does not exist (use --row 0..{total - 1})")


def _read_split(files: DatasetFiles, shards: list[str]) -> pa.Table:
    """Every row of a split (the three row columns)."""
    tables = []
    for rel in shards:
        with files.open(rel) as f:
            tables.append(_parquet(files.where(rel), lambda f=f: pq.read_table(f, columns=ROW_COLUMNS)))
    return pa.concat_tables(tables)


def _card_metadata(files: DatasetFiles) -> dict[str, Any]:
    text = files.read_text(CARD_NAME)
    if text is None:
        return {}
    try:
        return parse_card_metadata(text)
    except ValueError as e:
        raise DataError(f"{files.where(CARD_NAME)}: {e}; re-create the folder with `hfprep run`") from None


def inspect_files(
    files: DatasetFiles,
    split: str | None = None,
    row: int = 0,
    tokenizer: str | None = None,
    *,
    config: str | None = None,
    report: bool = False,
) -> dict[str, Any]:
    """Schema, card stats, packing report and one decoded row of the dataset behind ``files`` (a folder or a repo),
    as a dict (``text`` holds the rendering)."""
    if row < 0:
        raise DataError(f"--row must be >= 0, got {row}")
    listing = files.list()
    meta = _card_metadata(files)
    config, splits = config_splits(meta, listing, config, files.label)
    if not splits:
        raise DataError(
            f"{files.label}: no data/<split>-XXXXX-of-YYYYY.parquet shards; is this a prepared dataset folder?"
        )
    split = split or ("train" if "train" in splits else next(iter(splits)))
    if split not in splits:
        raise DataError(f"{files.label}: no split {split!r}; splits are {list(splits)}")
    hf = hfprep_block(meta, config)
    tok_meta = hf.get("tokenizer", {}) or {}
    schema, r = _read_row(files, splits[split], row, split)
    decoder, used = _load_decoder(tokenizer, files, listing, config, tok_meta)
    pad_id, padded = tok_meta.get("pad_token_id"), output_is_padded(hf.get("packing"), hf.get("packing_kwargs"))
    rendered = render_row(np.array(r["input_ids"]), np.array(r["position_ids"]), np.array(r["loss_mask"]), decoder,
                          pad_id, padded)
    stats = hf.get("stats", {}) or {}
    seq_len = hf.get("seq_len")
    reports = {s: format_stats_report(st, int(seq_len)) for s, st in stats.items() if st and seq_len}
    full = None
    if report:
        length = int(seq_len) if seq_len else max(len(r["input_ids"]), 1)
        full = packing_report(_read_split(files, splits[split]), length, stats.get(split), pad_token_id=pad_id,
                              padded=padded)
        reports[split] = format_report(full)

    head = files.label + (f" (config {config!r})" if config != DEFAULT_CONFIG or len(config_names(meta)) > 1 else "")
    lines = [head, "", "schema:"] + [f"  {f.name}: {f.type}" for f in schema]
    lines += ["", "splits:"]
    for s, rels in splits.items():
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
    if reports:
        lines += ["", "packing report (from the card's stats" + (f"; {split!r} from its rows" if full else "; --report "
                  "reads every row for segment counts and lengths") + "):"]
        for s, text in reports.items():
            lines += [f"  {s}:"] + [f"    {line}" for line in text.splitlines()]
    else:
        lines += ["", f"packing report: the card records no stats for config {config!r} (--report reads the rows)"]
    lines += ["", f"row {row} of {split!r} ({len(r['input_ids'])} tokens"
              + (f", decoded with {used}" if used else ", ids only: no tokenizer available") + "): " + rendered]
    return {
        "target": files.label,
        "config": config,
        "schema": {f.name: str(f.type) for f in schema},
        "splits": {s: len(v) for s, v in splits.items()},
        "stats": stats,
        "packing_report": full,
        "row": r,
        "text": "\n".join(lines),
    }


def inspect_folder(folder: str | os.PathLike, split: str | None = None, row: int = 0, tokenizer: str | None = None,
                   *, config: str | None = None, report: bool = False) -> dict[str, Any]:
    """:func:`inspect_files` of a prepared folder (a multi-config one too: a Hub repo's files on disk)."""
    return inspect_files(LocalFiles(folder), split, row, tokenizer, config=config, report=report)


def inspect_repo(repo_id: str, split: str | None = None, row: int = 0, tokenizer: str | None = None, *,
                 config: str | None = None, revision: str | None = None, report: bool = False) -> dict[str, Any]:
    """:func:`inspect_files` of a Hub dataset repo at ``revision`` (default ``main``), without downloading it."""
    require_hub(f"inspect of {repo_id!r}", "inspect a local folder")
    return inspect_files(HubFiles(repo_id, revision), split, row, tokenizer, config=config, report=report)


def split_target(target: str, config: str | None = None) -> tuple[str, str | None]:
    """``(folder or repo id, config)`` of ``TARGET[:CONFIG]``; a config in both places must agree.

    Example:
        >>> split_target("me/data:code"), split_target("me/data", "code")
        (('me/data', 'code'), ('me/data', 'code'))
    """
    head, sep, tail = target.rpartition(":")
    if not sep or not head or not tail or os.path.exists(target):
        return target, config
    if config is not None and config != tail:
        raise DataError(f"{target!r} names config {tail!r} but --config says {config!r}; give it once")
    return head, tail


def inspect_target(
    target: str,
    split: str | None = None,
    row: int = 0,
    tokenizer: str | None = None,
    *,
    config: str | None = None,
    revision: str | None = None,
    report: bool = False,
) -> dict[str, Any]:
    """A local folder when ``target`` (without ``:CONFIG``) is one on disk, else a Hub repo id."""
    if row < 0:
        raise DataError(f"--row must be >= 0, got {row}")
    target, config = split_target(target, config)
    if os.path.isdir(target):
        if revision is not None:
            raise DataError(f"--revision picks a Hub revision; {target!r} is a local folder (drop --revision)")
        return inspect_folder(target, split, row, tokenizer, config=config, report=report)
    if os.path.exists(target) or looks_like_path(target) or target.count("/") != 1:
        raise DataError(f"{target!r} is not a dataset folder (no such directory) nor a Hub repo id (user/name)")
    return inspect_repo(target, split, row, tokenizer, config=config, revision=revision, report=report)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in result.items() if k != "text"}, default=str)
