"""Training side: a ``transformers.Trainer`` collator for hfprep's packed rows.

Rows prepared by hfprep carry ``input_ids``, ``position_ids`` (restarting at 0 at every document start) and
``loss_mask``. :class:`DataCollatorForPackedLM` turns a list of such rows into the batch a causal LM expects,
in transformers' convention:

* ``input_ids``, ``labels``, ``position_ids``: int64. Labels are **not** pre-shifted (the model shifts them);
  a label is ``-100`` where ``loss_mask`` is False and at the first token of every segment, so no loss is ever
  taken for predicting a document's first token from the end of the previous document.
* Padding (hfprep pads a row at its end with the pad id, position 0 and ``loss_mask`` False) becomes *one*
  ignored segment: its positions are rewritten to ``0, 1, 2, ...`` so the model does not see hundreds of
  one-token "documents" (which would blow up ``cu_seq_lens`` and slow varlen kernels).
* Documents never attend to each other. In the default ``"position_ids"`` mode no ``attention_mask`` key is
  returned at all: transformers then detects the packed segments from ``position_ids`` (a new segment wherever
  the position does not increase by exactly 1) for eager, sdpa, flex and flash attention. A 2D
  ``attention_mask``, even one full of ones, would switch that detection off, and so does a KV cache: the batch
  carries ``use_cache=False`` because a model whose config says ``use_cache=True`` builds a cache on every
  forward outside ``Trainer`` (see ``disable_cache``).
* Speed: everything is a handful of vectorised numpy operations on the (B, L) batch (~0.2-0.3 ms for 8 x 8192
  on numpy rows). Rows given as Python lists (``with_format(None)``) spend most of the time converting lists;
  ``dataset.with_format("numpy")`` avoids that.

Padding rule: the row contract's (:func:`hfprep.schema.padding_mask`): the padding of a row is the longest run at
its *end* of tokens with ``position_ids == 0`` and ``loss_mask == False`` (and ``input_ids == pad_token_id`` when
``pad_token_id`` is given). hfprep's padded packers never leave such a token at the end of real data, so on their
rows this is exactly the padding they wrote. On other rows (dense packing) a document cut at the very end of a row
can contribute its first token to that run; merging it into the padding segment changes nothing (it has no label
and is the last token of the row, so nothing it sees is ever scored).

Example:
    >>> collator = DataCollatorForPackedLM()
    >>> row = {"input_ids": [5, 6, 0, 7, 0, 0, 0], "position_ids": [0, 1, 2, 0, 0, 0, 0],
    ...        "loss_mask": [True, True, True, True, False, False, False]}
    >>> batch = collator([row])
    >>> batch["labels"].tolist()
    [[-100, 6, 0, -100, -100, -100, -100]]
    >>> batch["position_ids"].tolist()  # the padding is one segment: 0, 1, 2
    [[0, 1, 2, 0, 0, 1, 2]]
    >>> sorted(batch)
    ['input_ids', 'labels', 'position_ids', 'use_cache']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Int64

from ..errors import ConfigError, DataError
from ..schema import padding_start, segment_ids
from .model_check import check_batch_ids, check_vocab_size_arg

AttentionMode = Literal["position_ids", "flash_varlen", "4d"]
IGNORE_INDEX = -100
ATTENTION_MODES: tuple[str, ...] = ("position_ids", "flash_varlen", "4d")


def _as_numpy(value: Any, dtype: type) -> np.ndarray:
    """One column of one row (list, numpy array, torch tensor) -> 1-D numpy array (no copy when possible)."""
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    return np.asarray(value, dtype=dtype)


def _stack_column(
    features: Sequence[Mapping[str, Any]], key: str, dtype: type, pad_value: int | bool | None, target_len: int
) -> np.ndarray:
    """Stack one column of the batch into a (B, target_len) array, right-padding with ``pad_value``."""
    first = features[0][key]
    # Fast paths: equal-length tensors/arrays are stacked in one call.
    if isinstance(first, torch.Tensor) and all(len(f[key]) == target_len for f in features):
        return torch.stack([f[key] for f in features]).numpy().astype(dtype, copy=False)
    if isinstance(first, np.ndarray) and all(len(f[key]) == target_len for f in features):
        return np.stack([f[key] for f in features]).astype(dtype, copy=False)
    out = np.empty((len(features), target_len), dtype=dtype)
    for r, f in enumerate(features):
        arr = _as_numpy(f[key], dtype)
        out[r, : len(arr)] = arr
        out[r, len(arr) :] = pad_value if pad_value is not None else 0
    return out


def trailing_padding_start(
    position_ids: Int64[np.ndarray, "batch seq_len"],
    loss_mask: Bool[np.ndarray, "batch seq_len"],
    input_ids: Int64[np.ndarray, "batch seq_len"] | None = None,
    pad_token_id: int | None = None,
    is_zero: Bool[np.ndarray, "batch seq_len"] | None = None,
) -> Int64[np.ndarray, " batch"]:
    """Index where the trailing padding of each row starts (``seq_len`` when the row has none).

    Padding is the longest run at the end of a row of tokens with position 0 and no loss (and, when
    ``pad_token_id`` is given, that id): :func:`hfprep.schema.padding_start`. ``is_zero`` is accepted for callers
    of earlier versions and not needed.

    Example:
        >>> pos = np.array([[0, 1, 0, 0], [0, 1, 2, 3]])
        >>> loss = np.array([[True, True, False, False], [True, True, True, True]])
        >>> trailing_padding_start(pos, loss).tolist()
        [2, 4]
    """
    return padding_start(input_ids, position_ids, loss_mask, pad_token_id)


def check_positions(
    position_ids: Int64[np.ndarray, "batch seq_len"], is_zero: Bool[np.ndarray, "batch seq_len"] | None = None
) -> None:
    """Every segment must count ``0, 1, 2, ...``: a row starts at 0 and each position is 0 or previous + 1.

    Anything else would make transformers' packed-sequence detection (a boundary wherever the position does not
    grow by 1) disagree with hfprep's segments (a boundary wherever the position is 0).
    """
    if position_ids.size == 0:
        return
    bad_start = position_ids[:, 0] != 0
    if bad_start.any():
        r = int(np.argmax(bad_start))
        raise DataError(
            f"batch row {r}: position_ids start at {int(position_ids[r, 0])}, not 0; every row must start a segment "
            "at 0 (re-pack with hfprep, which rebases positions, or fix the positions with position_fix_helper)"
        )
    nxt = position_ids[:, 1:]
    ok = nxt == position_ids[:, :-1] + 1
    ok |= (nxt == 0) if is_zero is None else is_zero[:, 1:]
    if not ok.all():
        r, t = (int(i) for i in np.argwhere(~ok)[0])
        raise DataError(
            f"batch row {r}, token {t + 1}: position {int(nxt[r, t])} follows {int(position_ids[r, t])}; inside a "
            "segment positions must grow by exactly 1 and a new segment must start at 0 (re-pack with hfprep)"
        )


def block_causal_mask(
    segment_ids: Int64[torch.Tensor, "batch seq_len"], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(B, 1, L, L) mask: token i sees j iff j <= i and both are in the same segment.

    The rule of :func:`hfprep.schema.causal_mask_from_positions`, from segment ids (:func:`hfprep.schema.segment_ids`),
    written block by block instead of as a dense comparison.

    ``torch.bool`` gives True = attend (for sdpa); a float dtype gives the additive form (0 = attend, the dtype's
    minimum = blocked) that eager attention adds to its scores. ``segment_ids`` must be non-decreasing along a row
    (segments are contiguous). Only the diagonal blocks are written after one fill, so the cost is the fill of
    B * L * L elements plus the documents' own squares.

    Example:
        >>> block_causal_mask(torch.tensor([[0, 0, 1]]), torch.bool)[0, 0].int().tolist()
        [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    """
    if dtype != torch.bool and not dtype.is_floating_point:
        raise ConfigError(f"mask_dtype must be torch.bool or a float dtype, got {dtype}")
    B, L = segment_ids.shape
    seg = segment_ids.numpy()
    bounds = [np.flatnonzero(np.diff(seg[r], prepend=seg[r, :1] - 1, append=seg[r, -1:] + 1)) for r in range(B)]
    longest = max((int(np.diff(b).max()) for b in bounds if len(b) > 1), default=0)
    tri = torch.ones(longest, longest, dtype=torch.bool).tril_()
    if dtype == torch.bool:
        out, block = torch.zeros(B, 1, L, L, dtype=torch.bool), tri
    else:
        blocked = torch.finfo(dtype).min
        out = torch.full((B, 1, L, L), blocked, dtype=dtype)
        block = torch.zeros(longest, longest, dtype=dtype).masked_fill_(~tri, blocked)
    for r, b in enumerate(bounds):
        for a, e in zip(b[:-1].tolist(), b[1:].tolist(), strict=True):
            out[r, 0, a:e, a:e] = block[: e - a, : e - a]
    return out


class DataCollatorForPackedLM:
    """Collate hfprep's packed rows for ``transformers.Trainer`` (or any causal LM training loop).

    Args:
        attention: ``"position_ids"`` (default): ``input_ids``, ``labels``, ``position_ids`` only, no
            ``attention_mask``, so transformers detects the packed documents itself (eager / sdpa / flex /
            flash). ``"flash_varlen"``: the batch flattened to shape (1, total) plus ``cu_seq_lens_q/k`` (int32)
            and ``max_length_q/k`` (int), the kwargs of FlashAttention's varlen kernel (the layout of
            transformers' ``DataCollatorWithFlattening``). ``"4d"``: adds an explicit block-diagonal causal
            ``attention_mask`` of shape (B, 1, L, L) in ``mask_dtype``.
        pad_token_id: id used when the collator itself pads (``padding`` / ``pad_to_multiple_of``); when given,
            trailing-padding detection also requires this id.
        padding: right-pad rows of unequal length to the longest one (an error otherwise; hfprep's packed rows
            all have the same length). Needs ``pad_token_id``.
        pad_to_multiple_of: pad the row length (flattened length in ``"flash_varlen"`` mode) to a multiple of
            this. Needs ``pad_token_id``.
        cross_document_labels: keep the seed's labels, which also score predicting a document's first token from
            the previous document (off by default: transformers' convention masks every segment start).
        drop_padding: in ``"flash_varlen"`` mode, leave each row's trailing padding out of the flattened batch.
        on_missing_columns: ``"error"`` (default) or ``"single_segment"``: a missing ``position_ids`` column
            makes each row one segment (``0..L-1``), a missing ``loss_mask`` puts loss on every token.
        mask_dtype: dtype of the ``"4d"`` mask: a float dtype (additive, works with eager and sdpa; match the
            model's dtype) or ``torch.bool`` (sdpa only).
        validate: check that positions count ``0, 1, 2, ...`` inside every segment (cheap; turn off only for
            data already validated).
        disable_cache: add ``use_cache=False`` to the batch. transformers skips packed-document detection when
            a KV cache exists, and a model whose config has ``use_cache=True`` (the default of most configs)
            creates one on every forward outside ``Trainer`` (which sets ``use_cache=False`` itself); without this
            the documents of a row would silently attend to each other. Turn it off only if your loop moves every
            batch value with ``.to(device)`` and you pass ``use_cache=False`` yourself.
        vocab_size: the model's vocabulary size (``model.get_input_embeddings().num_embeddings``): every batch is
            checked (one ``min``/``max``) and an id outside ``0..vocab_size-1`` is a one-line ``DataError`` naming
            the row and the batch's largest id, instead of an ``IndexError`` deep in the embedding (a device-side
            assert on CUDA). :class:`~hfprep.train.callbacks.ModelCheckCallback` checks the whole dataset once
            before step one instead.

    Input rows may be lists, numpy arrays or torch tensors (``with_format(None | "numpy" | "torch")``). A 2D
    ``attention_mask`` column is accepted only when it is all ones and is then dropped; a ``labels`` column is
    an error (labels are built from ``loss_mask``).

    Example:
        >>> from transformers import Trainer, TrainingArguments  # doctest: +SKIP
        >>> args = TrainingArguments("out", remove_unused_columns=False)  # keep loss_mask / position_ids  # doctest: +SKIP
        >>> Trainer(model, args, train_dataset=packed, data_collator=DataCollatorForPackedLM()).train()  # doctest: +SKIP
        >>> rows = [{"input_ids": [1, 2, 0], "position_ids": [0, 1, 2], "loss_mask": [True] * 3},
        ...         {"input_ids": [3, 0, 4], "position_ids": [0, 1, 0], "loss_mask": [True] * 3}]
        >>> b = DataCollatorForPackedLM(attention="flash_varlen")(rows)
        >>> b["cu_seq_lens_q"].tolist(), b["max_length_q"], b["labels"].tolist()
        ([0, 3, 5, 6], 3, [[-100, 2, 0, -100, 0, -100]])
    """

    def __init__(
        self,
        attention: AttentionMode = "position_ids",
        pad_token_id: int | None = None,
        padding: bool = False,
        pad_to_multiple_of: int | None = None,
        cross_document_labels: bool = False,
        drop_padding: bool = False,
        on_missing_columns: Literal["error", "single_segment"] = "error",
        mask_dtype: torch.dtype = torch.float32,
        validate: bool = True,
        disable_cache: bool = True,
        vocab_size: int | None = None,
    ) -> None:
        if attention not in ATTENTION_MODES:
            raise ConfigError(f"attention={attention!r} is not supported; choose one of {list(ATTENTION_MODES)}")
        if on_missing_columns not in ("error", "single_segment"):
            raise ConfigError(
                f"on_missing_columns={on_missing_columns!r} is not supported; choose 'error' or 'single_segment'"
            )
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1):
            raise ConfigError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of!r}")
        if (padding or pad_to_multiple_of) and pad_token_id is None:
            raise ConfigError(
                "padding / pad_to_multiple_of need a pad_token_id (use the id hfprep packed with: the tokenizer's "
                "eos id unless you set one)"
            )
        if mask_dtype != torch.bool and not mask_dtype.is_floating_point:
            raise ConfigError(f"mask_dtype must be torch.bool or a float dtype (the model's), got {mask_dtype}")
        if drop_padding and attention != "flash_varlen":
            raise ConfigError("drop_padding only applies to attention='flash_varlen' (other modes keep row shapes)")
        check_vocab_size_arg(vocab_size)
        self.attention = attention
        self.pad_token_id = pad_token_id
        self.padding = padding
        self.pad_to_multiple_of = pad_to_multiple_of
        self.cross_document_labels = cross_document_labels
        self.drop_padding = drop_padding
        self.on_missing_columns = on_missing_columns
        self.mask_dtype = mask_dtype
        self.validate = validate
        self.disable_cache = disable_cache
        self.vocab_size = vocab_size

    # ------------------------------------------------------------------------------------------ input checks

    def _check_columns(self, features: Sequence[Mapping[str, Any]]) -> tuple[bool, bool]:
        if not features:
            raise DataError("empty batch: the collator needs at least one row")
        first = features[0]
        if "input_ids" not in first:
            raise DataError(f"batch rows have no 'input_ids' column (columns: {sorted(first)}); pass rows prepared by hfprep")
        if "labels" in first:
            raise DataError(
                "batch rows already have a 'labels' column; DataCollatorForPackedLM builds labels from loss_mask: "
                "remove the column (dataset.remove_columns('labels'))"
            )
        has_pos, has_loss = "position_ids" in first, "loss_mask" in first
        missing = [c for c, ok in (("position_ids", has_pos), ("loss_mask", has_loss)) if not ok]
        if missing and self.on_missing_columns == "error":
            raise DataError(
                f"batch rows have no {missing} column(s) (columns: {sorted(first)}); with transformers.Trainer set "
                "TrainingArguments(remove_unused_columns=False) so they are not dropped, or pass "
                "on_missing_columns='single_segment' to treat each row as one document with loss everywhere"
            )
        if "attention_mask" in first:
            for r, f in enumerate(features):
                am = f["attention_mask"]
                arr = am.numpy() if isinstance(am, torch.Tensor) else np.asarray(am)
                if arr.ndim != 1 or not np.all(arr == 1):
                    raise DataError(
                        f"batch row {r}: an 'attention_mask' column with zeros (or not 1-D) cannot be combined with "
                        "packed rows (a 2D mask disables packed-document detection); drop the column: hfprep marks "
                        "padding with position 0 and loss_mask False"
                    )
        return has_pos, has_loss

    # ------------------------------------------------------------------------------------------- collation

    def __call__(self, features: Sequence[Mapping[str, Any]], return_tensors: str | None = None) -> dict[str, Any]:
        if return_tensors not in (None, "pt"):
            raise ConfigError(f"return_tensors={return_tensors!r} is not supported; only 'pt'")
        has_pos, has_loss = self._check_columns(features)
        lengths = [len(f["input_ids"]) for f in features]
        for key in [k for k, ok in (("position_ids", has_pos), ("loss_mask", has_loss)) if ok]:
            for r, f in enumerate(features):
                if len(f[key]) != lengths[r]:
                    raise DataError(
                        f"batch row {r}: {key} has {len(f[key])} values but input_ids has {lengths[r]}; every "
                        "column of a row must have the same length (re-prepare the rows with hfprep)"
                    )
        longest = max(lengths)
        flat = self.attention == "flash_varlen"
        if not flat and not self.padding and min(lengths) != longest:
            r = int(np.argmin(lengths))
            raise DataError(
                f"batch rows have different lengths (row 0: {lengths[0]}, row {r}: {lengths[r]}); pack with a fixed "
                "seq_len, or pass DataCollatorForPackedLM(padding=True, pad_token_id=...)"
            )
        target = longest
        if self.pad_to_multiple_of and not flat:
            target = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of

        ids = _stack_column(features, "input_ids", np.int64, self.pad_token_id, target)
        if self.vocab_size is not None:
            check_batch_ids(ids, self.vocab_size)
        if has_pos:
            pos = _stack_column(features, "position_ids", np.int64, 0, target)
        else:
            pos = np.broadcast_to(np.arange(target, dtype=np.int64), (len(features), target)).copy()
        if has_loss:
            loss = _stack_column(features, "loss_mask", np.bool_, False, target)
        else:
            loss = np.ones((len(features), target), dtype=np.bool_)
        if not has_pos and target != min(lengths):
            # Positions of collator-added padding must be 0 so the padding is found below.
            for r, n in enumerate(lengths):
                pos[r, n:] = 0
                loss[r, n:] = False
        elif not has_loss:
            for r, n in enumerate(lengths):
                loss[r, n:] = False

        is_zero = pos == 0  # segment starts, computed once for the checks, the padding and the labels
        if self.validate:
            check_positions(pos, is_zero)
        pad_start = trailing_padding_start(pos, loss, ids, self.pad_token_id, is_zero)
        # The trailing padding becomes one segment: positions 0, 1, 2, ... (per-row slice, rows are few).
        for r in np.flatnonzero(pad_start < target).tolist():
            s = int(pad_start[r])
            pos[r, s:] = np.arange(target - s, dtype=np.int64)

        # Segment starts are exactly the zeros of the (validated) positions; padding positions 1, 2, ... are not
        # starts but have loss_mask False, so they get -100 either way.
        keep = loss if self.cross_document_labels else loss & ~is_zero
        labels = np.where(keep, ids, IGNORE_INDEX)

        if flat:
            batch = self._flatten(ids, labels, pos, pad_start, lengths)
        else:
            batch: dict[str, Any] = {
                "input_ids": torch.from_numpy(ids),
                "labels": torch.from_numpy(labels),
                "position_ids": torch.from_numpy(pos),
            }
        if self.attention == "4d":
            # The row contract's segments (schema.segment_ids), built block by block here for speed.
            seg = torch.from_numpy(segment_ids(pos))
            batch["attention_mask"] = block_causal_mask(seg, self.mask_dtype)
        if self.disable_cache:
            batch["use_cache"] = False
        return batch

    def _flatten(
        self,
        ids: np.ndarray,
        labels: np.ndarray,
        pos: np.ndarray,
        pad_start: np.ndarray,
        lengths: list[int],
    ) -> dict[str, Any]:
        ends = np.minimum(pad_start, lengths) if self.drop_padding else np.asarray(lengths)
        if int(ends.min()) == ids.shape[1]:
            ids_f, labels_f, pos_f = ids.reshape(-1), labels.reshape(-1), pos.reshape(-1)
        else:
            keep = np.arange(ids.shape[1])[None, :] < ends[:, None]
            ids_f, labels_f, pos_f = ids[keep], labels[keep], pos[keep]
        total = ids_f.shape[0]
        if self.pad_to_multiple_of:
            extra = -total % self.pad_to_multiple_of
            if extra:
                # One more ignored segment: positions 0..extra-1, no labels.
                ids_f = np.concatenate([ids_f, np.full(extra, self.pad_token_id, np.int64)])
                labels_f = np.concatenate([labels_f, np.full(extra, IGNORE_INDEX, np.int64)])
                pos_f = np.concatenate([pos_f, np.arange(extra, dtype=np.int64)])
        starts = np.flatnonzero(pos_f == 0)
        cu = np.empty(len(starts) + 1, dtype=np.int32)
        cu[:-1] = starts
        cu[-1] = len(pos_f)
        max_len = int(np.diff(cu).max()) if len(cu) > 1 else 0
        cu_t = torch.from_numpy(cu)
        return {
            "input_ids": torch.from_numpy(ids_f)[None],
            "labels": torch.from_numpy(labels_f)[None],
            "position_ids": torch.from_numpy(pos_f)[None],
            "cu_seq_lens_q": cu_t,
            "cu_seq_lens_k": cu_t,
            "max_length_q": max_len,
            "max_length_k": max_len,
        }


def batch_nbytes(batch: Mapping[str, Any]) -> int:
    """Bytes held by the tensors of a collated batch (python ints count 8).

    Example:
        >>> batch_nbytes({"a": torch.zeros(2, 3, dtype=torch.int64), "n": 3})
        56
    """
    total = 0
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            total += v.numel() * v.element_size()
        elif isinstance(v, np.ndarray):
            total += v.nbytes
        elif isinstance(v, int | float):
            total += 8
    return total
