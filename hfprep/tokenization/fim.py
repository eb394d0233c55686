"""Fill-in-the-middle on raw documents (the StarCoder / bigcode way), as an option of the ``pretrain`` strategy.

With probability ``fim_rate`` a document is cut at two random *character* positions into prefix / middle /
suffix and emitted in PSM or (with probability ``fim_spm_rate``) SPM form, exactly as the ``fim`` strategy
assembles its rows (:func:`fim_pieces_to_flat`)::

    PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle <eos>
    SPM: <fim_suffix> suffix <fim_prefix> prefix <fim_middle> middle <eos>

Every other document is a plain pretrain row (``text <eos>``, loss everywhere). ``only_middle_not_masked`` of the
config applies to FIM documents as in the ``fim`` strategy.

**Randomness.** All four random draws of a document come from one digest,
``sha256(b"hfprep-fim\\0" + fim_seed (8 bytes, little endian, signed) + text (UTF-8))``, read as four big-endian
64-bit words ``w0..w3`` turned into uniforms ``u = (w >> 11) / 2**53`` in ``[0, 1)``:

* ``u0 < fim_rate``: the document becomes FIM;
* ``u1 < fim_spm_rate``: SPM (else PSM);
* ``u2``, ``u3``: two cut points ``floor(u * (n_chars + 1))`` in ``0..n_chars``, sorted; prefix = ``text[:lo]``,
  middle = ``text[lo:hi]``, suffix = ``text[hi:]`` (pieces may be empty, as in bigcode's implementation).

A document's outcome therefore depends only on ``fim_seed`` and its own text: not on ``num_proc``, batch size,
input order or engine. Identical documents get identical outcomes; change ``fim_seed`` for another draw.

**Statistics.** Over ``N`` distinct documents the FIM count is Binomial(N, fim_rate) (standard deviation
``sqrt(fim_rate * (1 - fim_rate) / N)`` of the fraction), SPM among them Binomial(n_fim, fim_spm_rate); the
middle covers on average a third of the characters (the gap between two sorted uniform points).

Example:
    >>> cfg = TokenizeConfig(strategy="pretrain", fim_rate=0.5, fim_spm_rate=0.5, fim_seed=1)  # doctest: +SKIP
    >>> flat = tokenize_batch({"content": ["def f(x):\\n    return x\\n"]}, tokenizer, cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Bool, Float64, Int64

from .pieces import FlatRows, assemble_pieces, positions_from_offsets

FIM_HASH_DOMAIN = b"hfprep-fim\0"
_TWO_POW_53 = float(2**53)


@dataclass
class FimDraws:
    """The per-document random decisions of raw-document FIM (see the module docstring for how they are drawn)."""

    is_fim: Bool[np.ndarray, " n"]
    is_spm: Bool[np.ndarray, " n"]
    lo: Int64[np.ndarray, " n"]
    hi: Int64[np.ndarray, " n"]


def document_uniforms(texts: Sequence[str], fim_seed: int) -> Float64[np.ndarray, "n 4"]:
    """Four uniforms in ``[0, 1)`` per document, from ``sha256(domain + seed + text)`` (order-independent).

    Example:
        >>> u = document_uniforms(["abc", "abc", "xyz"], fim_seed=0)
        >>> u.shape, bool((u[0] == u[1]).all()), bool((u[0] == u[2]).all())
        ((3, 4), True, False)
    """
    base = hashlib.sha256(FIM_HASH_DOMAIN + int(fim_seed).to_bytes(8, "little", signed=True))
    digests = bytearray()
    for t in texts:
        h = base.copy()
        # surrogatepass: lone surrogates (seen in scraped text) must hash, not crash.
        h.update(t.encode("utf-8", "surrogatepass"))
        digests += h.digest()
    words = np.frombuffer(bytes(digests), dtype=">u8").reshape(len(texts), 4).astype(np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) / _TWO_POW_53


def draw_fim(texts: Sequence[str], fim_rate: float, fim_spm_rate: float, fim_seed: int) -> FimDraws:
    """Decide, per document, FIM or not, SPM or PSM, and the two character cut points.

    Example:
        >>> d = draw_fim(["hello world"] * 3 + ["other"], fim_rate=1.0, fim_spm_rate=0.0, fim_seed=7)
        >>> d.is_fim.tolist(), d.is_spm.tolist(), bool((d.lo <= d.hi).all())
        ([True, True, True, True], [False, False, False, False], True)
    """
    u = document_uniforms(texts, fim_seed)
    n_chars = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    cuts = np.floor(u[:, 2:4] * (n_chars[:, None] + 1).astype(np.float64)).astype(np.int64)
    # float rounding can only reach n_chars + 1 for astronomically long texts; clip keeps the contract anyway.
    np.minimum(cuts, n_chars[:, None], out=cuts)
    cuts.sort(axis=1)
    return FimDraws(u[:, 0] < fim_rate, u[:, 1] < fim_spm_rate, cuts[:, 0], cuts[:, 1])


def _gather_docs(
    parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], order: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate several flat document sets, then put their documents in ``order`` with one gather."""
    ids = np.concatenate([p[0] for p in parts])
    mask = np.concatenate([p[2] for p in parts])
    starts, lens, shift = [], [], 0
    for p in parts:
        off = p[3]
        starts.append(off[:-1] + shift)
        lens.append(np.diff(off))
        shift += int(off[-1])
    start = np.concatenate(starts)[order]
    length = np.concatenate(lens)[order]
    out_off = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(length, out=out_off[1:])
    gather = np.arange(int(out_off[-1]), dtype=np.int64) + np.repeat(start - out_off[:-1], length)
    return ids[gather], positions_from_offsets(out_off), mask[gather], out_off


def pretrain_with_fim(
    texts: Sequence[str],
    kept: Int64[np.ndarray, " n"],
    config: Any,
    specials: Any,
    backend: Any,
):
    """Tokenize pretrain documents, turning a seeded random subset into FIM rows (one backend call per batch).

    ``texts`` are the non-empty documents of the batch, ``kept`` their input-row indices. The backend encodes
    ``prefixes + middles + suffixes`` of the FIM documents and the whole text of the others in one call; FIM rows
    are assembled by :func:`fim_pieces_to_flat`, plain rows as ``text + [eos]``, and the two sets
    are merged back into input order with one gather.

    Example:
        >>> cfg = TokenizeConfig(strategy="pretrain", fim_rate=1.0)  # doctest: +SKIP
        >>> Tokenizer(tokenizer, cfg)({"content": ["abc"]}).input_ids  # doctest: +SKIP
    """
    draws = draw_fim(texts, config.fim_rate, config.fim_spm_rate, config.fim_seed)
    fim_idx = np.flatnonzero(draws.is_fim)
    plain_idx = np.flatnonzero(~draws.is_fim)
    lo, hi = draws.lo[fim_idx].tolist(), draws.hi[fim_idx].tolist()
    fim_texts = [texts[i] for i in fim_idx.tolist()]
    prefixes = [t[:a] for t, a in zip(fim_texts, lo)]
    middles = [t[a:b] for t, a, b in zip(fim_texts, lo, hi)]
    suffixes = [t[b:] for t, b in zip(fim_texts, hi)]
    plain = [texts[i] for i in plain_idx.tolist()]
    values, offsets = backend.encode_batch(prefixes + middles + suffixes + plain)
    m = len(fim_idx)
    split = 3 * m
    fim_flat = fim_pieces_to_flat(
        values, offsets[: split + 1], m, specials, draws.is_spm[fim_idx], config.only_middle_not_masked
    )
    if not len(plain_idx):
        fim_flat.kept = kept[fim_idx]
        return fim_flat
    # Plain documents: their spans follow the FIM pieces in `values`; append eos after each.
    p_off = offsets[split:] - offsets[split]
    p_vals = values[int(offsets[split]) :]
    p_len = np.diff(p_off) + 1
    p_doc_off = np.zeros(len(plain_idx) + 1, dtype=np.int64)
    np.cumsum(p_len, out=p_doc_off[1:])
    p_ids = np.empty(int(p_doc_off[-1]), dtype=np.uint32)
    is_eos = np.zeros(len(p_ids), dtype=np.bool_)
    is_eos[p_doc_off[1:] - 1] = True
    p_ids[is_eos] = specials.eos
    p_ids[~is_eos] = p_vals
    plain_part = (p_ids, None, np.ones(len(p_ids), dtype=np.bool_), p_doc_off)
    if not m:
        return FlatRows(*_gather_docs([plain_part], np.arange(len(plain_idx))), kept=kept[plain_idx])
    fim_part = (fim_flat.input_ids, None, fim_flat.loss_mask, fim_flat.doc_offsets)
    # Documents of the merged set are [fim docs..., plain docs...]; `order` puts them back in input order.
    order = np.argsort(np.concatenate([fim_idx, plain_idx]), kind="stable")
    ids, pos, mask, doc_off = _gather_docs([fim_part, plain_part], order)
    return FlatRows(ids, pos, mask, doc_off, kept)


def fim_pieces_to_flat(
    values: np.ndarray,
    offsets: np.ndarray,
    n: int,
    specials: Any,
    spm: Bool[np.ndarray, " n"],
    only_middle_not_masked: bool,
    kept: np.ndarray | None = None,
) -> FlatRows:
    """Assemble FIM documents from encoded ``prefixes + middles + suffixes`` (3n spans, in that order).

    ``spm[i]`` picks SPM for document ``i`` (else PSM), so raw-document FIM can mix formats in one batch. The
    middle ends with ``specials.fim_end`` where the family has one (CodeLlama's ``<EOT>``), else the eos. SPM is
    the seed's ``<suffix> suffix <prefix> prefix <middle> middle``, except for CodeLlama, whose documented SPM is
    ``<PRE> <SUF> suffix <MID> prefix middle``.
    """
    base = len(values)
    end = getattr(specials, "fim_end", None)
    source = np.concatenate(
        [
            values,
            np.array(
                [specials.fim_prefix, specials.fim_suffix, specials.fim_middle, specials.eos if end is None else end],
                np.uint32,
            ),
        ]
    )
    FP, FS, FM, EOS = base, base + 1, base + 2, base + 3
    starts = offsets[:-1]
    lens = np.diff(offsets)
    pre_s, mid_s, suf_s = starts[:n], starts[n : 2 * n], starts[2 * n :]
    pre_l, mid_l, suf_l = lens[:n], lens[n : 2 * n], lens[2 * n :]
    one = np.ones(n, np.int64)
    zero = np.zeros(n, np.int64)
    spm = np.asarray(spm, dtype=np.bool_)
    # Piece order per document: [tok, span, tok, span, <middle>, span, middle, end]. PSM and the seed's SPM leave
    # the third span empty (SPM swaps the (<prefix>, prefix) and (<suffix>, suffix) pairs); CodeLlama's SPM
    # moves the prefix after <MID>.
    code_llama = getattr(specials, "fim_family", None) == "CodeLlama"
    late = spm & code_llama
    swap = spm & ~code_llama
    first_tok = np.where(swap, FS, FP)
    first_s, first_l = np.where(swap, suf_s, pre_s), np.where(swap, suf_l, np.where(late, 0, pre_l))
    second_tok = np.where(swap, FP, FS)
    second_s, second_l = np.where(swap, pre_s, suf_s), np.where(swap, pre_l, suf_l)
    third_s, third_l = pre_s, np.where(late, pre_l, zero)
    piece_start = np.stack(
        [first_tok, first_s, second_tok, second_s, np.full(n, FM), third_s, mid_s, np.full(n, EOS)], 1
    )
    piece_len = np.stack([one, first_l, one, second_l, one, third_l, mid_l, one], 1)
    loss_row = (
        np.array([0, 0, 0, 0, 0, 0, 1, 1], np.bool_) if only_middle_not_masked else np.ones(8, np.bool_)
    )
    piece_loss = np.broadcast_to(loss_row, (n, 8))
    ids, pos, mask, doc_off = assemble_pieces(
        source, piece_start.ravel(), piece_len.ravel(), piece_loss.ravel(), np.full(n, 8, np.int64)
    )
    return FlatRows(ids, pos, mask, doc_off, np.arange(n, dtype=np.int64) if kept is None else kept)
