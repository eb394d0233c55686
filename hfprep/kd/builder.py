"""Build a KD cache: run a teacher over a prepared hfprep dataset and store its top-k next-token log-probs.

Per packed row the teacher sees exactly what training sees: the row's ``input_ids`` with its ``position_ids``
(restarting at 0 at each document) and block-diagonal causal attention, so no document ever attends to another.
For every position ``t`` with a target (token ``t+1`` in the same document) the cache stores the top-k of the
full-vocabulary ``log_softmax(logits[t] / temperature)``, sorted descending; other positions hold fill values
(see :mod:`hfprep.kd.format`).

Shards are written one by one, each atomically, into a hidden ``.<output>.partial`` folder next to the output;
a restarted run checks every finished shard (config, teacher, tokenizer and the hash of its input rows) and
skips it, so a killed run resumes at the last complete shard and ends byte-identical to an uninterrupted one.
The finished folder is published with one rename (:func:`hfprep.output.layout.atomic_output`).

Example:
    >>> summary = run_kd_recipe("recipes/kd_cache.yaml")  # doctest: +SKIP
    >>> summary["splits"]["train"]["rows"], summary["bytes_per_token"]  # doctest: +SKIP
    (128, 84.2)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import transformers  # AutoModelForCausalLM is resolved on use: importing it costs about half a second more
from jaxtyping import Bool, Float, UInt32
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError, OutputExistsError, TokenizerError, warnings_scope
from ..interrupts import handle_interrupts
from ..output.layout import (
    CARD_NAME,
    DATA_DIR,
    atomic_output,
    claim_output,
    hf_schema,
    list_split_files,
    output_errors,
    shard_filename,
)
from ..schema import causal_mask_from_positions, padding_mask
from ..tokenization.loading import eos_token_id, load_tokenizer, tokenizer_fingerprint
from .card import render_card
from .config import KDCacheConfig, load_kd_recipe
from .format import (
    ALIGNMENT,
    FILL_HIDDEN,
    FILL_ID,
    FILL_LOGPROB,
    FORMAT_VERSION,
    HIDDEN_DTYPES,
    LOGPROB_DTYPES,
    META_KEY,
    NORMALISATION,
    ROW_COLUMNS,
    cache_features,
    check_complete_shards,
    flat_list,
    hidden_column,
    list_values_numpy,
    nested_fixed_list,
    read_meta,
)

STATE_NAME = "kd_state.json"
HIDDEN_CONVENTION = (
    "transformers' hidden_states[i]: i=0 embedding output, 1<=i<num_layers output of decoder block i-1, "
    "i=num_layers output of the last block after the final norm"
)


# --- input rows -------------------------------------------------------------------------------------------------


def split_files(folder: str | os.PathLike, splits: list[str] | None) -> dict[str, list[Path]]:
    """The Parquet shards of each split of a prepared dataset folder, checked for completeness."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"input folder {str(root)!r} not found; point input.folder at a prepared hfprep dataset")
    found = list_split_files(root)
    if not found:
        raise DataError(
            f"input folder {str(root)!r} has no data/<split>-XXXXX-of-YYYYY.parquet shards: it is not a prepared "
            "hfprep dataset (make one with `hfprep run RECIPE` first)"
        )
    wanted = splits if splits is not None else sorted(found)
    out: dict[str, list[Path]] = {}
    for s in wanted:
        if s not in found:
            raise DataError(f"input folder {str(root)!r} has no split {s!r} (found {sorted(found)}); fix input.splits")
        check_complete_shards([str(root / f) for f in found[s]], source=str(root / DATA_DIR))
        out[s] = [root / f for f in found[s]]
    return out


def validate_rows(table: pa.Table, where: str, first_row: int, vocab_size: int) -> None:
    """Check that a table holds hfprep-prepared rows; errors name the file and row.

    Prepared rows have ``input_ids``/``position_ids`` (uint32 lists) and ``loss_mask`` (bool list) of equal
    lengths, every row starts at position 0, and inside a row each position is the previous + 1 or 0 (a new
    segment). Ids must be < the tokenizer's vocabulary size.
    """
    missing = [c for c in ROW_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing} (has {table.column_names}); a KD cache needs hfprep-prepared rows "
            "(input_ids, position_ids, loss_mask): make them with `hfprep run RECIPE` first"
        )
    for c in ROW_COLUMNS:
        t = table.schema.field(c).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
            raise DataError(f"{where}: column {c!r} is {t}, expected a list per row (hfprep-prepared rows)")
    lens = [pc.list_value_length(table.column(c)).to_numpy(zero_copy_only=False) for c in ROW_COLUMNS]
    bad = np.flatnonzero((lens[0] != lens[1]) | (lens[0] != lens[2]) | (lens[0] < 1))
    if len(bad):
        raise DataError(
            f"{where}: row {first_row + int(bad[0])} has input_ids/position_ids/loss_mask of lengths "
            f"{[int(x[bad[0]]) for x in lens]}; prepared rows have equal, non-zero lengths"
        )
    ids, offsets = list_values_numpy(table.column("input_ids"))
    pos, _ = list_values_numpy(table.column("position_ids"))
    pos = pos.astype(np.int64)
    ok = np.ones(len(pos), dtype=bool)
    ok[1:] = (pos[1:] == pos[:-1] + 1) | (pos[1:] == 0)
    starts = offsets[:-1]
    ok[starts] = pos[starts] == 0
    if not ok.all():
        tok = int(np.argmin(ok))
        row = int(np.searchsorted(offsets, tok, side="right") - 1)
        raise DataError(
            f"{where}: row {first_row + row} has position_ids that do not restart at 0 per segment and count up by 1 "
            f"(token {tok - int(offsets[row])}: {int(pos[tok])}); not a hfprep-prepared row"
        )
    if len(ids) and int(ids.max()) >= vocab_size:
        tok = int(np.argmax(ids >= vocab_size))
        row = int(np.searchsorted(offsets, tok, side="right") - 1)
        raise DataError(
            f"{where}: row {first_row + row} has token id {int(ids[tok])} >= the tokenizer's vocabulary size "
            f"{vocab_size}; the rows were prepared with another tokenizer, set tokenizer.name_or_path to it"
        )


class _RowStream:
    """Rows of a split's shards in order, served in chunks of any size (row group by row group, validated)."""

    def __init__(self, files: list[Path], vocab_size: int) -> None:
        self._tables = self._iter_tables(files, vocab_size)
        self._buf: list[pa.Table] = []
        self._buf_rows = 0

    @staticmethod
    def _iter_tables(files: list[Path], vocab_size: int) -> Iterator[pa.Table]:
        for f in files:
            pf = pq.ParquetFile(f)
            missing = [c for c in ROW_COLUMNS if c not in pf.schema_arrow.names]
            if missing:
                validate_rows(pa.table({n: [] for n in pf.schema_arrow.names}), str(f), 0, vocab_size)
            first = 0
            for rg in range(pf.num_row_groups):
                t = pf.read_row_group(rg, columns=list(ROW_COLUMNS))
                validate_rows(t, str(f), first, vocab_size)
                first += t.num_rows
                yield t

    def take(self, n: int) -> pa.Table:
        while self._buf_rows < n:
            t = next(self._tables, None)
            if t is None:
                break
            self._buf.append(t)
            self._buf_rows += t.num_rows
        table = pa.concat_tables(self._buf) if self._buf else None
        if table is None:
            raise DataError("input ended early: the shards changed while the cache was being built")
        head, rest = table.slice(0, n), table.slice(n)
        self._buf, self._buf_rows = ([rest] if rest.num_rows else []), rest.num_rows
        return head


def rows_sha256(table: pa.Table) -> str:
    """sha256 of a chunk of rows (lengths, ids, positions, loss mask): identifies exactly which rows a shard covers."""
    ids, offsets = list_values_numpy(table.column("input_ids"))
    pos, _ = list_values_numpy(table.column("position_ids"))
    mask, _ = list_values_numpy(table.column("loss_mask"))
    h = hashlib.sha256()
    h.update(np.diff(offsets).astype("<i8").tobytes())
    h.update(np.ascontiguousarray(ids, dtype="<u4").tobytes())
    h.update(np.ascontiguousarray(pos, dtype="<u4").tobytes())
    h.update(np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    return h.hexdigest()


def row_masks(
    ids: UInt32[np.ndarray, " n"],
    pos: UInt32[np.ndarray, " n"],
    loss: Bool[np.ndarray, " n"],
    offsets: np.ndarray,
    pad_token_id: int,
) -> tuple[Bool[np.ndarray, " n"], Bool[np.ndarray, " n"]]:
    """``(attn_mask, target_mask)`` of flat rows.

    Padding is the row contract's (:func:`hfprep.schema.padding_mask`): the trailing run of tokens that are
    ``pad_token_id`` with position 0 and no loss. ``target_mask[t]``
    is True iff ``t+1`` is in the same row, is not a segment start (``position_ids[t+1] > 0``) and not padding.
    """
    n = len(ids)
    attn = ~padding_mask(ids, pos, loss, offsets, pad_token_id)
    target = np.zeros(n, dtype=bool)
    target[:-1] = pos[1:] > 0
    target[offsets[1:] - 1] = False  # the row's last token: its successor is in the next row
    target &= attn
    target[:-1] &= attn[1:]
    return attn, target


# --- teacher ----------------------------------------------------------------------------------------------------


@dataclass
class Teacher:
    """A loaded teacher and what the cache records about it."""

    model: Any
    device: torch.device
    dtype: torch.dtype
    id: str
    revision: str
    logits_width: int
    num_layers: int
    hidden_size: int
    masking: str


def _local_weights_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"} or p.name == "config.json")
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def load_teacher(cfg: KDCacheConfig) -> Teacher:
    """Load the teacher by Hub id or local path, in eval mode, bf16 on CUDA / fp32 on CPU unless told otherwise."""
    t = cfg.teacher
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if t.device == "auto" else t.device)
    if t.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, t.dtype)
    kwargs: dict[str, Any] = {"revision": t.revision, "dtype": dtype, "trust_remote_code": t.trust_remote_code}
    if t.attn_implementation:
        kwargs["attn_implementation"] = t.attn_implementation
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(t.name_or_path, **kwargs)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"could not load teacher {t.name_or_path!r}: {str(e).splitlines()[0]} -- check teacher.name_or_path "
            "and teacher.revision"
        ) from e
    model.to(device).eval()
    if t.masking == "4d" and model.config._attn_implementation not in ("eager", "sdpa"):
        raise ConfigError(
            f"teacher.masking '4d' needs attn_implementation eager or sdpa, not "
            f"{model.config._attn_implementation!r}; use masking: position_ids"
        )
    local = Path(t.name_or_path)
    if local.is_dir():
        ident, revision = local.name, t.revision or f"sha256:{_local_weights_sha256(local)}"
    else:
        ident = t.name_or_path
        revision = getattr(model.config, "_commit_hash", None) or t.revision or "unknown"
    width = int(model.get_output_embeddings().weight.shape[0])
    return Teacher(
        model=model,
        device=device,
        dtype=dtype,
        id=ident,
        revision=str(revision),
        logits_width=width,
        num_layers=int(model.config.num_hidden_layers),
        hidden_size=int(model.config.hidden_size),
        masking=t.masking,
    )


def check_teacher_tokenizer(cfg: KDCacheConfig, teacher: Teacher, tokenizer) -> None:
    """Teacher and student must give every id the same meaning: logits wide enough, same vocabulary when known."""
    vocab = len(tokenizer)
    if teacher.logits_width < vocab:
        raise TokenizerError(
            f"teacher {teacher.id!r} has logits width {teacher.logits_width} but tokenizer "
            f"{cfg.tokenizer.name_or_path!r} has {vocab} ids: teacher and student vocabularies differ; distil with "
            "a teacher that uses the student's tokenizer"
        )
    try:
        teacher_tok = load_tokenizer(cfg.teacher.name_or_path, revision=cfg.teacher.revision)
    except TokenizerError:
        return  # the teacher ships no tokenizer: the width check above is all we can do
    a, b = teacher_tok.get_vocab(), tokenizer.get_vocab()
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])
        raise TokenizerError(
            f"teacher {teacher.id!r} tokenizer differs from {cfg.tokenizer.name_or_path!r} "
            f"({len(a)} vs {len(b)} tokens, {len(diff)} (token, id) pairs differ, e.g. {diff[0]!r}); a KD cache "
            "needs one tokenizer for teacher and student"
        )


def block_diagonal_mask(pos: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: 0 where token i may attend to j (j <= i, same segment), dtype-min elsewhere."""
    allowed = causal_mask_from_positions(pos)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=pos.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@torch.inference_mode()
def teacher_topk(
    teacher: Teacher,
    ids: torch.Tensor,
    pos: torch.Tensor,
    vocab_size: int,
    k: int,
    temperature: float,
    hidden_layers: list[int],
) -> tuple[
    UInt32[torch.Tensor, "batch seq k"], Float[torch.Tensor, "batch seq k"], dict[int, torch.Tensor], torch.Tensor
]:
    """One forward pass on (B, L) packed rows -> top-k ids, full-vocab log-probs, hidden states, finiteness (B, L).

    ``use_cache=False`` matters: transformers only derives the packed block-diagonal mask from ``position_ids``
    when there is neither an attention mask nor a KV cache.
    """
    kwargs: dict[str, Any] = {"input_ids": ids, "position_ids": pos, "use_cache": False}
    if teacher.masking == "4d":
        kwargs["attention_mask"] = block_diagonal_mask(pos, teacher.dtype)
    if hidden_layers:
        kwargs["output_hidden_states"] = True
    out = teacher.model(**kwargs)
    # ids >= vocab_size exist only in padded embedding tables; the student can never emit them
    logits = out.logits[..., :vocab_size].float()
    finite = torch.isfinite(logits).all(dim=-1)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    vals, idx = torch.topk(logp, k, dim=-1, largest=True, sorted=True)
    hidden = {i: out.hidden_states[i] for i in hidden_layers}
    for h in hidden.values():
        finite &= torch.isfinite(h.float()).all(dim=-1)
    return idx.to(torch.int64), vals, hidden, finite


# --- one shard --------------------------------------------------------------------------------------------------


@dataclass
class ShardResult:
    table: pa.Table
    tokens: int
    targets: int


def _hidden_to_numpy(h: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return h.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return h.to(getattr(torch, dtype)).cpu().numpy()


def compute_shard(
    rows: pa.Table, cfg: KDCacheConfig, teacher: Teacher, vocab_size: int, pad_token_id: int, where: str, first_row: int
) -> ShardResult:
    """Run the teacher over a chunk of rows and assemble the cache table (one output row per input row)."""
    ids, offsets = list_values_numpy(rows.column("input_ids"))
    pos, _ = list_values_numpy(rows.column("position_ids"))
    loss, _ = list_values_numpy(rows.column("loss_mask"))
    ids, pos, loss = ids.astype(np.uint32), pos.astype(np.uint32), loss.astype(bool)
    attn, target = row_masks(ids, pos, loss, offsets, pad_token_id)
    n, k = len(ids), cfg.k
    top_ids = np.full((n, k), FILL_ID, dtype=np.uint32)
    top_lp = np.full((n, k), FILL_LOGPROB, dtype=np.float32)
    hidden = {
        i: np.full((n, teacher.hidden_size), FILL_HIDDEN, dtype=HIDDEN_DTYPES[cfg.hidden_dtype])
        for i in cfg.hidden_layers
    }
    lengths = np.diff(offsets)
    for b0 in range(0, rows.num_rows, cfg.batch_size):
        b1 = min(b0 + cfg.batch_size, rows.num_rows)
        Lmax = int(lengths[b0:b1].max())
        bi = np.full((b1 - b0, Lmax), pad_token_id, dtype=np.int64)
        bp = np.zeros((b1 - b0, Lmax), dtype=np.int64)  # batch padding: position 0 -> its own segment per token
        for r in range(b0, b1):
            a, e = int(offsets[r]), int(offsets[r + 1])
            bi[r - b0, : e - a] = ids[a:e]
            bp[r - b0, : e - a] = pos[a:e]
        ti, tv, th, finite = teacher_topk(
            teacher,
            torch.from_numpy(bi).to(teacher.device),
            torch.from_numpy(bp).to(teacher.device),
            vocab_size,
            k,
            cfg.temperature,
            cfg.hidden_layers,
        )
        ti, tv, finite = ti.cpu().numpy(), tv.cpu().numpy(), finite.cpu().numpy()
        hn = {i: _hidden_to_numpy(h, cfg.hidden_dtype) for i, h in th.items()}
        for r in range(b0, b1):
            a, e = int(offsets[r]), int(offsets[r + 1])
            real = attn[a:e]
            if not finite[r - b0, : e - a][real].all():
                t = int(np.flatnonzero(~finite[r - b0, : e - a] & real)[0])
                raise DataError(
                    f"{where}: teacher {teacher.id!r} produced NaN/inf at row {first_row + r}, token {t}; the cache "
                    "would poison training (check the teacher's weights and dtype: try teacher.dtype float32)"
                )
            tm = target[a:e]
            top_ids[a:e][tm] = ti[r - b0, : e - a][tm]
            top_lp[a:e][tm] = tv[r - b0, : e - a][tm]
            for i, h in hn.items():
                hidden[i][a:e][real] = h[r - b0, : e - a][real]
    table = pa.table(
        {
            "input_ids": flat_list(ids, offsets, pa.uint32()),
            "position_ids": flat_list(pos, offsets, pa.uint32()),
            "loss_mask": flat_list(loss, offsets, pa.bool_()),
            "attn_mask": flat_list(attn.astype(np.uint8), offsets, pa.uint8()),
            "target_mask": flat_list(target, offsets, pa.bool_()),
            "topk_ids": nested_fixed_list(top_ids, offsets),
            "topk_logprobs": nested_fixed_list(top_lp.astype(LOGPROB_DTYPES[cfg.logprob_dtype]), offsets),
            **{hidden_column(i): nested_fixed_list(h, offsets) for i, h in hidden.items()},
        }
    )
    return ShardResult(table=table, tokens=n, targets=int(target.sum()))


def _is_nested_float(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        and pa.types.is_fixed_size_list(t.value_type)
        and pa.types.is_floating(t.value_type.value_type)
    )


def write_shard(table: pa.Table, path: Path, features, meta: dict[str, Any], cfg: KDCacheConfig) -> None:
    """Write one cache shard atomically: zstd, no dictionary, byte-stream-split floats, fixed row groups."""
    schema = hf_schema(table, features)
    schema = schema.with_metadata({**schema.metadata, META_KEY: json.dumps(meta, sort_keys=True).encode()})
    table = table.replace_schema_metadata(schema.metadata)
    float_leaves = [f"{f.name}.list.element.list.element" for f in table.schema if _is_nested_float(f.type)]
    tmp = path.parent / f".{path.name}.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        pq.write_table(
            table,
            str(tmp),
            row_group_size=cfg.output.row_group_rows,
            compression=cfg.output.compression,
            compression_level=cfg.output.compression_level,
            use_dictionary=False,
            use_byte_stream_split=float_leaves,
            write_statistics=False,
        )
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C: no torn shard file stays in the resumable folder
        tmp.unlink(missing_ok=True)
        raise


# --- driver -----------------------------------------------------------------------------------------------------


@dataclass
class _SplitPlan:
    files: list[Path]
    rows: int
    num_shards: int
    per: int
    shard_hashes: list[str] = field(default_factory=list)
    tokens: int = 0
    targets: int = 0
    written: int = 0
    skipped: int = 0
    written_tokens: int = 0


def _shard_is_complete(path: Path, expect: dict[str, Any]) -> bool:
    """A finished shard from an earlier run: readable footer whose metadata matches this run exactly."""
    if not path.is_file():
        return False
    try:
        meta = read_meta(pq.read_schema(path))
    except (OSError, pa.ArrowInvalid):
        return False  # a torn file (cannot happen with rename, but a copied partial folder might hold one)
    return meta is not None and all(meta.get(k) == v for k, v in expect.items())


def build_kd_cache(
    cfg: KDCacheConfig, overwrite: bool = False, progress: bool = True, *, protect: Iterable[str | os.PathLike] = ()
) -> dict[str, Any]:
    """Build the cache described by ``cfg``; returns a summary dict (also what ``hfprep kd-cache`` prints).

    Example:
        >>> from hfprep.kd.config import config_from_dict
        >>> cfg = config_from_dict({"input": {"folder": "prepared"}, "teacher": {"name_or_path": "teacher"},
        ...     "tokenizer": {"name_or_path": "teacher"}, "output": {"folder": "kd"}, "k": 8})  # doctest: +SKIP
        >>> build_kd_cache(cfg)["tokens"]  # doctest: +SKIP
        4096
    """
    inputs = kd_inputs(cfg, protect)
    # One writer per output (and per resumable .partial folder) for the whole build; --overwrite only replaces a
    # folder hfprep wrote that holds none of the build's inputs.
    with handle_interrupts(), claim_output(cfg.output.folder, overwrite, inputs), warnings_scope():
        return _build_claimed(cfg, overwrite, progress, inputs)


def kd_inputs(cfg: KDCacheConfig, extra: Iterable[str | os.PathLike | None] = ()) -> list[str]:
    """Local paths a build reads (input folder, local teacher and tokenizer, ``extra`` such as the recipe file)."""
    paths = [cfg.input.folder, *(str(p) for p in extra if p is not None)]
    paths += [s.name_or_path for s in (cfg.teacher, cfg.tokenizer) if os.path.exists(s.name_or_path)]
    return paths


def _build_claimed(cfg: KDCacheConfig, overwrite: bool, progress: bool, inputs: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    final = Path(cfg.output.folder).absolute()
    files = split_files(cfg.input.folder, cfg.input.splits)
    tokenizer = load_tokenizer(cfg.tokenizer.name_or_path, revision=cfg.tokenizer.revision, key="tokenizer.name_or_path")
    vocab = len(tokenizer)
    if cfg.k > vocab:
        raise ConfigError(f"k={cfg.k} is larger than the vocabulary ({vocab} ids); lower k")
    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else eos_token_id(tokenizer)
    teacher = load_teacher(cfg)
    check_teacher_tokenizer(cfg, teacher, tokenizer)
    bad = [i for i in cfg.hidden_layers if not 0 <= i <= teacher.num_layers]
    if bad:
        raise ConfigError(
            f"hidden_layers {bad} out of range: teacher {teacher.id!r} has hidden_states[0..{teacher.num_layers}]"
        )
    fp = tokenizer_fingerprint(tokenizer)

    plans: dict[str, _SplitPlan] = {}
    for split, fs in files.items():
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in fs)
        num_shards = max(1, -(-rows // cfg.output.rows_per_shard))
        plans[split] = _SplitPlan(fs, rows, num_shards, -(-rows // num_shards) if rows else 0)
    identity = {
        "config_fingerprint": cfg.fingerprint(),
        "teacher_revision": teacher.revision,
        "tokenizer_fingerprint": fp,
    }
    work = final.parent / f".{final.name}.partial"
    state_path = work / STATE_NAME
    if work.exists() or work.is_symlink():
        try:
            old = json.loads(state_path.read_text()) if state_path.is_file() and not work.is_symlink() else None
        except ValueError:
            old = {}  # a torn state file (killed while writing it): hfprep's, but from an unknown run
        if old is None:
            raise OutputExistsError(
                f"{str(work)!r} is in the way of the resumable build and hfprep did not write it (no {STATE_NAME}); "
                "move it away or pick another output"
            )
        if old != identity:
            if not overwrite:
                raise ConfigError(
                    f"{str(work)!r} holds a partial cache from a different recipe, teacher or tokenizer; delete it "
                    "or pass --overwrite to start over"
                )
            shutil.rmtree(work)
    with output_errors(final):
        (work / DATA_DIR).mkdir(parents=True, exist_ok=True)
        tmp_state = work / f".{STATE_NAME}.tmp"
        tmp_state.write_text(json.dumps(identity, sort_keys=True))
        os.replace(tmp_state, state_path)

    static = {
        "format_version": FORMAT_VERSION,
        "k": cfg.k,
        "selection": "top-k of the full-vocabulary log-softmax, sorted descending",
        "temperature": cfg.temperature,
        "alignment": ALIGNMENT,
        "normalisation": NORMALISATION,
        "logprob_dtype": cfg.logprob_dtype,
        "fill": {"topk_ids": FILL_ID, "topk_logprobs": FILL_LOGPROB, "hidden": FILL_HIDDEN},
        "teacher": {
            "id": teacher.id,
            "revision": teacher.revision,
            "logits_width": teacher.logits_width,
            "num_hidden_layers": teacher.num_layers,
            "hidden_size": teacher.hidden_size,
            "masking": teacher.masking,
        },
        "tokenizer": {"fingerprint": fp, "vocab_size": vocab, "pad_token_id": pad_id},
        "hidden_states": {
            "layers": list(cfg.hidden_layers),
            "dtype": cfg.hidden_dtype,
            "convention": HIDDEN_CONVENTION,
        },
    }
    hidden_spec = {i: (teacher.hidden_size, cfg.hidden_dtype) for i in cfg.hidden_layers}
    features = cache_features(cfg.k, cfg.logprob_dtype, hidden_spec)

    for split, plan in plans.items():
        stream = _RowStream(plan.files, vocab)
        # closed on any exit: an error line printed after an open bar would share its line
        with tqdm(total=plan.num_shards, desc=f"kd-cache {split}", unit="shard", disable=not progress) as bar:
            for i in range(plan.num_shards):
                chunk = stream.take(plan.per)
                h = rows_sha256(chunk)
                plan.shard_hashes.append(h)
                path = work / shard_filename(split, i, plan.num_shards)
                shard_meta = {
                    **static,
                    **identity,
                    "split": split,
                    "shard": i,
                    "num_shards": plan.num_shards,
                    "input_sha256": h,
                }
                if _shard_is_complete(path, shard_meta):
                    md = pq.read_metadata(path).metadata[META_KEY]
                    done = json.loads(md)
                    plan.tokens += done["tokens"]
                    plan.targets += done["targets"]
                    plan.skipped += 1
                else:
                    res = compute_shard(chunk, cfg, teacher, vocab, pad_id, f"{split} shard {i}", i * plan.per)
                    shard_meta.update(tokens=res.tokens, targets=res.targets)
                    with output_errors(final):
                        write_shard(res.table, path, features, shard_meta, cfg)
                    plan.tokens += res.tokens
                    plan.targets += res.targets
                    plan.written += 1
                    plan.written_tokens += res.tokens
                bar.update(1)

    split_rows = {s: p.rows for s, p in plans.items()}
    tokens = sum(p.tokens for p in plans.values())
    targets = sum(p.targets for p in plans.values())
    data_bytes = sum(p.stat().st_size for p in (work / DATA_DIR).glob("*.parquet"))
    input_sha = hashlib.sha256("".join(h for p in plans.values() for h in p.shard_hashes).encode()).hexdigest()
    meta = {
        **static,
        "input": {
            "name": Path(cfg.input.folder).name,
            "splits": {
                s: {"rows": p.rows, "sha256": hashlib.sha256("".join(p.shard_hashes).encode()).hexdigest()}
                for s, p in plans.items()
            },
            "sha256": input_sha,
            "row_format": "hfprep packed rows: input_ids, position_ids (restart at 0 per segment), loss_mask",
        },
        "config_fingerprint": identity["config_fingerprint"],
        "stats": {
            "rows": sum(split_rows.values()),
            "tokens": tokens,
            "targets": targets,
            "bytes_on_disk": data_bytes,
            "bytes_per_token": round(data_bytes / max(tokens, 1), 2),
        },
    }
    split_bytes = {s: sum(f.stat().st_size for f in (work / DATA_DIR).glob(f"{s}-*.parquet")) for s in plans}
    card = render_card(meta, features, split_rows, split_bytes, final.name)
    with atomic_output(final, overwrite=overwrite, protect=inputs) as tmp:
        (tmp / DATA_DIR).mkdir()
        for p in sorted((work / DATA_DIR).glob("*.parquet")):
            os.link(p, tmp / DATA_DIR / p.name)
        (tmp / CARD_NAME).write_text(card)
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    written = sum(p.written_tokens for p in plans.values())
    return {
        "output": str(final),
        "splits": {
            s: {"rows": p.rows, "tokens": p.tokens, "shards": p.num_shards, "written": p.written, "skipped": p.skipped}
            for s, p in plans.items()
        },
        "rows": meta["stats"]["rows"],
        "tokens": tokens,
        "targets": targets,
        "k": cfg.k,
        "bytes_on_disk": data_bytes,
        "bytes_per_token": meta["stats"]["bytes_per_token"],
        "input_sha256": input_sha,
        "teacher": teacher.id,
        "seconds": round(seconds, 3),
        "teacher_tokens_per_s": round(written / seconds, 1) if seconds > 0 else None,
    }


def run_kd_recipe(path: str, overwrite: bool = False) -> dict:
    """``hfprep kd-cache RECIPE [--overwrite]``: validate the YAML recipe and build the cache; returns the summary."""
    return build_kd_cache(load_kd_recipe(path), overwrite=overwrite, protect=[path])


def format_summary(summary: dict[str, Any]) -> str:
    """A one-screen summary of :func:`build_kd_cache`'s result."""
    lines = [f"KD cache -> {summary['output']}  (teacher {summary['teacher']}, k={summary['k']})"]
    for s, d in summary["splits"].items():
        lines.append(f"  {s}: {d['rows']} rows, {d['tokens']} tokens, {d['shards']} shards ({d['skipped']} resumed)")
    lines.append(
        f"  {summary['tokens']} tokens ({summary['targets']} with a target), {summary['bytes_on_disk']} bytes = "
        f"{summary['bytes_per_token']} bytes/token, {summary['seconds']} s"
    )
    return "\n".join(lines)
