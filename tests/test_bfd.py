"""bfd packing: hand-worked cases, an exact slow reference, hypothesis properties per overflow policy, the
PrepareForTrainingTransform path."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

import hfprep.pack.bfd  # noqa: F401  (registers "bfd" in PACKERS)
from hfprep import ConfigError, PrepareForTrainingTransform, PrepareForTrainingTransformConfig, pack_sequences
from hfprep.pack.bfd import bfd_assign, pack_bfd_flat
from hfprep.pack.packers import PACKERS, get_packer, pack_no_incomplete_flat

PAD = 7


def flat_docs(lengths, masks=None):
    """Documents whose token ids are their global token index (so every token is identifiable)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    ids = np.arange(1000, 1000 + total, dtype=np.uint32)
    pos = np.concatenate([np.arange(n) for n in lengths] or [np.zeros(0)]).astype(np.uint32)
    mask = np.ones(total, bool) if masks is None else np.asarray(masks, bool)
    return ids, pos, mask, offsets


# --- slow plain-Python reference -----------------------------------------------------------------------------


def ref_pieces(lengths, seq_len, overflow):
    """(doc, start_in_doc, length) per piece, in input order."""
    out = []
    for d, n in enumerate(lengths):
        if n == 0:
            continue
        if n <= seq_len:
            out.append((d, 0, n))
        elif overflow == "split":
            out += [(d, s, min(seq_len, n - s)) for s in range(0, n, seq_len)]
        elif overflow == "truncate":
            out.append((d, 0, seq_len))
    return out


def ref_bfd_rows(sizes, seq_len):
    """Best fit decreasing, one item at a time: min room >= size, ties -> the bin that got that room earliest."""
    items = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    bins = []  # [room, stamp, items]
    for clock, i in enumerate(items):
        fits = [b for b in bins if b[0] >= sizes[i]]
        if fits:
            b = min(fits, key=lambda b: (b[0], b[1]))
        else:
            b = [seq_len, 0, []]
            bins.append(b)
        b[0] -= sizes[i]
        b[1] = clock
        b[2].append(i)
    return [b[2] for b in bins]


def ref_greedy_rows(sizes, seq_len):
    rows, fill = [], seq_len
    for i, n in enumerate(sizes):
        if fill + n > seq_len:
            rows.append([])
            fill = 0
        rows[-1].append(i)
        fill += n
    return rows


def ref_pack(lengths, masks, seq_len, overflow, pad):
    """Rows as lists of (id, position, loss) tuples; bfd, or in-order greedy when that needs fewer rows."""
    ids, _, mask, offsets = flat_docs(lengths, masks)
    pieces = ref_pieces(list(lengths), seq_len, overflow)
    sizes = [p[2] for p in pieces]
    rows = ref_bfd_rows(sizes, seq_len)
    lower = -(-sum(sizes) // seq_len)
    if len(rows) > lower and len(ref_greedy_rows(sizes, seq_len)) < len(rows):
        rows = ref_greedy_rows(sizes, seq_len)
    out = []
    for row in rows:
        toks = []
        for p in row:
            d, s, n = pieces[p]
            base = int(offsets[d]) + s
            toks += [(int(ids[base + k]), k, bool(mask[base + k])) for k in range(n)]
        if pad:
            toks += [(PAD, 0, False)] * (seq_len - len(toks))
        out.append(toks)
    return out


def as_tuples(packed):
    return [
        list(zip(r["input_ids"].tolist(), r["position_ids"].tolist(), r["loss_mask"].tolist(), strict=True))
        for r in packed.rows()
    ]


# --- hand-worked cases ---------------------------------------------------------------------------------------


def test_registered_in_packers():
    assert PACKERS["bfd"] is pack_bfd_flat
    assert get_packer("bfd") is pack_bfd_flat


def test_hand_worked_best_fit():
    # sorted 3,2,2,1: 3 opens row 0 (room 1); 2 opens row 1 (room 2); 2 fills row 1; 1 goes to row 0 (room 1).
    bins, n = bfd_assign(np.array([3, 2, 2, 1]), 4)
    assert bins.tolist() == [0, 1, 1, 0] and n == 2
    # best fit, not first fit: rows end with room 2 (5) and 1 (3+3); the 1 goes to the tighter row 1.
    bins, n = bfd_assign(np.array([5, 3, 3, 1]), 7)
    assert bins.tolist() == [0, 1, 1, 1] and n == 2
    # ties in length keep input order; ties in room go to the row that reached that room first.
    bins, n = bfd_assign(np.array([2, 2, 2, 1, 1]), 3)
    assert bins.tolist() == [0, 1, 2, 0, 1] and n == 3


def test_trl_docstring_examples_split_and_truncate():
    # The documented outputs of TRL's pack_dataset on these rows (bfd_split / bfd), with our padding added.
    rows = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10], [11]]
    offsets = np.cumsum([0] + [len(r) for r in rows])
    ids = np.array([t for r in rows for t in r], np.uint32)
    pos = np.array([p for r in rows for p in range(len(r))], np.uint32)
    mask = np.array([True, False, True, True, False, True, True, True, True, True, False])
    split = pack_bfd_flat(ids, pos, mask, offsets, 4, 0, overflow="split", pad=False)
    assert [r["input_ids"].tolist() for r in split.rows()] == [[1, 2, 3, 4], [8, 9, 10, 5], [6, 7, 11]]
    assert [r["position_ids"].tolist() for r in split.rows()] == [[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 0]]
    # the split piece [5] keeps its own loss flag (False), [11] too (False)
    assert [r["loss_mask"].tolist() for r in split.rows()][1:] == [[True, True, True, False], [True, True, False]]
    trunc = pack_bfd_flat(ids, pos, mask, offsets, 4, 0, overflow="truncate", pad=True)
    assert [r["input_ids"].tolist() for r in trunc.rows()] == [[1, 2, 3, 4], [8, 9, 10, 11], [6, 7, 0, 0]]
    assert trunc.stats.tokens_truncated == 1 and trunc.stats.docs_truncated == 1
    assert trunc.stats.tokens_dropped == 1 and trunc.stats.pad_tokens == 2
    drop = pack_bfd_flat(ids, pos, mask, offsets, 4, 0, overflow="drop", pad=False)
    assert [r["input_ids"].tolist() for r in drop.rows()] == [[8, 9, 10, 11], [6, 7]]
    assert (drop.stats.docs_dropped, drop.stats.tokens_dropped) == (1, 5)


def test_greedy_fallback_when_best_fit_needs_more_rows():
    # bfd: [12, 11 | 8, 8, 7 | 5, 1] would need 3 rows of 27; in input order greedy needs 2.
    lengths = [8, 12, 1, 5, 11, 8, 7]
    assert len(ref_bfd_rows(lengths, 27)) == 3
    out = pack_bfd_flat(*flat_docs(lengths), 27, PAD)
    assert out.stats.rows == 2 and out.stats.extra["groups_greedy_fallback"] == 1
    assert as_tuples(out) == ref_pack(lengths, None, 27, "split", True)


def test_pack_sequences_seed_api_and_empty_input():
    rows = [
        {"input_ids": np.array([5, 6, 7], np.uint32), "position_ids": np.arange(3, dtype=np.uint32),
         "loss_mask": np.ones(3, bool)},
        {"input_ids": np.array([8], np.uint32), "position_ids": np.arange(1, dtype=np.uint32),
         "loss_mask": np.ones(1, bool)},
    ]
    out = pack_sequences(rows, 4, 0, "bfd")
    assert [r["input_ids"].tolist() for r in out] == [[5, 6, 7, 8]]
    empty = pack_bfd_flat(*flat_docs([]), 4, 0)
    assert empty.num_rows == 0 and empty.stats.tokens_in == 0


def test_bad_options_are_clear_errors():
    args = flat_docs([3, 2])
    with pytest.raises(ConfigError, match="overflow must be one of"):
        pack_bfd_flat(*args, 4, 0, overflow="wrap")
    with pytest.raises(ConfigError, match="pad_token_id"):
        pack_bfd_flat(*args, 4, None, pad=True)
    with pytest.raises(ConfigError, match="pad must be true or false"):
        pack_bfd_flat(*args, 4, 0, pad="yes")
    with pytest.raises(ConfigError, match="seq_len"):
        pack_bfd_flat(*args, 1, 0)


def test_deterministic():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 90, 500)
    a = pack_bfd_flat(*flat_docs(lengths), 64, PAD)
    b = pack_bfd_flat(*flat_docs(lengths), 64, PAD)
    for x, y in zip(
        (a.input_ids, a.position_ids, a.loss_mask, a.row_offsets),
        (b.input_ids, b.position_ids, b.loss_mask, b.row_offsets),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


def test_matches_slow_reference_on_many_lengths():
    rng = np.random.default_rng(0)
    lengths = np.clip(np.rint(rng.lognormal(np.log(40), 1.0, 400)), 1, 300).astype(int)
    masks = rng.random(int(lengths.sum())) < 0.7
    for seq_len in (64, 128):
        for overflow in ("split", "truncate", "drop"):
            for pad in (True, False):
                got = pack_bfd_flat(*flat_docs(lengths, masks), seq_len, PAD, overflow=overflow, pad=pad)
                assert as_tuples(got) == ref_pack(lengths, masks, seq_len, overflow, pad), (seq_len, overflow, pad)


# --- properties -----------------------------------------------------------------------------------------------


@st.composite
def packing_inputs(draw):
    seq_len = draw(st.integers(2, 40))
    lengths = draw(st.lists(st.integers(0, 3 * seq_len), max_size=40))
    total = sum(lengths)
    masks = draw(st.lists(st.booleans(), min_size=total, max_size=total))
    return seq_len, lengths, masks


@settings(max_examples=150, deadline=None)
@given(packing_inputs(), st.sampled_from(["split", "truncate", "drop"]), st.booleans())
def test_every_policy_keeps_its_promise(inp, overflow, pad):
    seq_len, lengths, masks = inp
    ids, pos, mask, offsets = flat_docs(lengths, masks)
    out = pack_bfd_flat(ids, pos, mask, offsets, seq_len, PAD, overflow=overflow, pad=pad)
    s = out.stats
    row_lens = np.diff(out.row_offsets)
    assert (row_lens <= seq_len).all()
    if pad:
        assert (row_lens == seq_len).all()
    else:
        assert (row_lens > 0).all()

    # Real tokens: identified by id (every input token has a distinct id >= 1000; PAD = 7).
    real = out.input_ids >= 1000
    assert (out.input_ids[~real] == PAD).all() and not out.position_ids[~real].any() and not out.loss_mask[~real].any()
    got = out.input_ids[real].astype(np.int64) - 1000
    # the loss mask follows its tokens, also across split pieces
    np.testing.assert_array_equal(out.loss_mask[real], mask[got])
    # segments: start at position 0, consecutive positions and consecutive source tokens inside
    for r in out.rows():
        keep = r["input_ids"] >= 1000
        assert not np.any(np.diff(keep.astype(int)) > 0), "padding only at the end of a row"
        src = r["input_ids"][keep].astype(np.int64)
        p = r["position_ids"][keep].astype(np.int64)
        if len(p):
            assert p[0] == 0
        inside = p[1:] != 0
        assert (p[1:][inside] == p[:-1][inside] + 1).all()
        assert (src[1:][inside] == src[:-1][inside] + 1).all()

    lengths_a = np.asarray(lengths, dtype=np.int64)
    long = lengths_a > seq_len
    expected_kept = {
        "split": lengths_a.sum(),
        "truncate": np.minimum(lengths_a, seq_len).sum(),
        "drop": lengths_a[~long].sum(),
    }[overflow]
    assert len(got) == s.tokens_out == expected_kept
    assert s.tokens_in == s.tokens_out + s.tokens_dropped == lengths_a.sum()
    if overflow == "split":
        np.testing.assert_array_equal(np.sort(got), np.arange(lengths_a.sum()))
        assert s.docs_split == long.sum() and s.extra["tokens_split"] == lengths_a[long].sum()
        assert s.tokens_dropped == 0
    elif overflow == "truncate":
        starts = offsets[:-1]
        want = np.concatenate([np.arange(a, a + min(n, seq_len)) for a, n in zip(starts, lengths_a)] or [[]])
        np.testing.assert_array_equal(np.sort(got), want)
        assert s.docs_truncated == long.sum()
        assert s.tokens_truncated == s.tokens_dropped == (lengths_a[long] - seq_len).sum()
    else:
        assert s.docs_dropped == long.sum() and s.tokens_dropped == lengths_a[long].sum()
        assert s.tokens_truncated == 0
    assert s.pad_tokens == (len(out.input_ids) - len(got))
    assert s.rows == out.num_rows

    # Never worse than in-order greedy on the same pieces (for drop: no_incomplete on the same input).
    pieces = ref_pieces(lengths, seq_len, overflow)
    greedy_rows = len(ref_greedy_rows([p[2] for p in pieces], seq_len))
    assert out.num_rows <= greedy_rows
    if overflow == "drop":
        ni = pack_no_incomplete_flat(ids, pos, mask, offsets, seq_len, PAD)
        assert out.num_rows <= ni.num_rows
        if pad:
            assert s.fill_ratio >= ni.stats.fill_ratio


@settings(max_examples=60, deadline=None)
@given(packing_inputs(), st.sampled_from(["split", "truncate", "drop"]), st.booleans())
def test_matches_slow_reference(inp, overflow, pad):
    seq_len, lengths, masks = inp
    got = pack_bfd_flat(*flat_docs(lengths, masks), seq_len, PAD, overflow=overflow, pad=pad)
    assert as_tuples(got) == ref_pack(lengths, masks, seq_len, overflow, pad)


# --- through PrepareForTrainingTransform ---------------------------------------------------------------------


def texts(n=300):
    rng = np.random.default_rng(1)
    words = ["alpha", "beta", "gamma", "import", "numpy", "def", "return", "\n", "🙂", "x"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) for _ in range(n)]


@pytest.mark.parametrize("overflow,pad", [("split", True), ("split", False), ("drop", True), ("truncate", False)])
def test_prepare_for_training_with_bfd(tokenizer_path, tokenizer, overflow, pad):
    seq_len = 24
    data = texts()
    cfg = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain",
        packing_strategy="bfd",
        tokenizer_name=tokenizer_path,
        seq_len=seq_len,
        num_reduce_chunks=3,
        packing_kwargs={"overflow": overflow, "pad": pad},
    )
    t = PrepareForTrainingTransform(cfg)
    out = t.run(Dataset.from_dict({"content": data}))
    stats = t.stats
    docs = [[*tokenizer.encode(x, add_special_tokens=False), tokenizer.eos_token_id] for x in data]
    lens = np.array([len(d) for d in docs])
    assert (lens > seq_len).any() and (lens <= seq_len).any()
    eos = tokenizer.eos_token_id
    rows = out.to_list()
    assert all(len(r["input_ids"]) <= seq_len for r in rows)
    if pad:
        assert all(len(r["input_ids"]) == seq_len for r in rows)
    # Segments (restarting at position 0, padding = trailing pos-0/loss-False eos tokens) rebuild the documents.
    segments = []
    for r in rows:
        ids, pos, loss = (np.array(r[k]) for k in ("input_ids", "position_ids", "loss_mask"))
        end = len(ids)
        while pad and end > 0 and pos[end - 1] == 0 and not loss[end - 1] and ids[end - 1] == eos:
            end -= 1
        starts = [*np.flatnonzero(pos[:end] == 0).tolist(), end]
        segments += [tuple(ids[a:b].tolist()) for a, b in itertools.pairwise(starts)]
    if overflow == "split":
        want = [tuple(d[i : i + seq_len]) for d in docs for i in range(0, len(d), seq_len)]
        assert stats["tokens_dropped"] == 0 and stats["docs_split"] == int((lens > seq_len).sum())
    elif overflow == "truncate":
        want = [tuple(d[:seq_len]) for d in docs]
        assert stats["tokens_truncated"] == int(np.clip(lens - seq_len, 0, None).sum())
    else:
        want = [tuple(d) for d in docs if len(d) <= seq_len]
        assert stats["docs_dropped"] == int((lens > seq_len).sum())
    assert sorted(segments) == sorted(want)
    assert stats["tokens_in"] == stats["tokens_out"] + stats["tokens_dropped"] == int(lens.sum())


# --- the Arrow path (pack_table) on rows that hold several segments, constant and mixed masks -------------------


def ref_pack_positions(src_pos, lengths, masks, seq_len, overflow, pad):
    """ref_pack for any input positions: a piece keeps its positions, except that its leading run (positions counting
    up by 1 from the first) is shifted to start at 0 (a split piece may begin inside a segment)."""
    ids, _, mask, offsets = flat_docs(lengths, masks)
    pieces = ref_pieces(list(lengths), seq_len, overflow)
    sizes = [p[2] for p in pieces]
    rows = ref_bfd_rows(sizes, seq_len)
    if len(rows) > -(-sum(sizes) // seq_len) and len(ref_greedy_rows(sizes, seq_len)) < len(rows):
        rows = ref_greedy_rows(sizes, seq_len)
    out = []
    for row in rows:
        toks = []
        for p in row:
            d, s, n = pieces[p]
            base = int(offsets[d]) + s
            pos = [int(src_pos[base + k]) for k in range(n)]
            lead = 1
            while lead < n and pos[lead] == pos[lead - 1] + 1:
                lead += 1
            pos = [x - pos[0] for x in pos[:lead]] + pos[lead:]
            toks += [(int(ids[base + k]), pos[k], bool(mask[base + k])) for k in range(n)]
        if pad:
            toks += [(PAD, 0, False)] * (seq_len - len(toks))
        out.append(toks)
    return out


@st.composite
def segmented_inputs(draw):
    """Documents made of one or more segments (re-packed rows), a mask that is all True, all False or mixed, and a
    row offset at which the Arrow table is sliced (so the bool bitmap starts inside a byte)."""
    seq_len = draw(st.integers(2, 30))
    docs = draw(st.lists(st.lists(st.integers(1, seq_len + 4), min_size=1, max_size=3), max_size=25))
    lengths = [sum(d) for d in docs]
    total = sum(lengths)
    kind = draw(st.sampled_from(["all True", "all False", "mixed"]))
    if kind == "mixed":
        masks = draw(st.lists(st.booleans(), min_size=total, max_size=total))
    else:
        masks = [kind == "all True"] * total
    positions = [k for d in docs for seg in d for k in range(seg)]
    return seq_len, lengths, masks, positions, draw(st.integers(0, 9))


@settings(max_examples=120, deadline=None)
@given(segmented_inputs(), st.sampled_from(["split", "truncate", "drop"]), st.booleans())
def test_arrow_path_matches_slow_reference_on_segmented_rows_and_constant_masks(inp, overflow, pad):
    from hfprep.pack.transform import pack_table
    from hfprep.schema import flat_to_table, table_to_flat

    seq_len, lengths, masks, positions, skip = inp
    lead = flat_docs([1] * skip, [True] * skip)  # rows sliced away below: the rest starts mid-byte in the bitmap
    ids, _, mask, offsets = flat_docs(lengths, masks)
    pos = np.array(positions, dtype=np.uint32)
    table = flat_to_table(
        np.concatenate([lead[0], ids]), np.concatenate([lead[1], pos]), np.concatenate([lead[2], mask]),
        np.concatenate([lead[3], offsets[1:] + skip]),
    ).slice(skip)
    out, stats = pack_table(table, seq_len, PAD, pack_bfd_flat, {"overflow": overflow, "pad": pad})
    o_ids, o_pos, o_mask, o_off = table_to_flat(out)
    got = [
        list(zip(o_ids[a:b].tolist(), o_pos[a:b].tolist(), o_mask[a:b].tolist(), strict=True))
        for a, b in itertools.pairwise(o_off.tolist())
    ]
    assert got == ref_pack_positions(pos, lengths, masks, seq_len, overflow, pad)
    assert stats.rows == len(got)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda s: st.tuples(st.just(s), st.lists(st.integers(1, s), max_size=80))))
def test_greedy_row_count_matches_in_order_greedy(inp):
    from hfprep.pack.packers import greedy_row_count

    seq_len, lengths = inp
    assert greedy_row_count(np.array(lengths, dtype=np.int64), seq_len) == len(ref_greedy_rows(lengths, seq_len))


def test_outputs_in_mapped_4k_page_memory_match_the_slow_reference(monkeypatch):
    # Large outputs live in an anonymous mapping without huge pages (packers.output_array); force that path on a
    # small input and check the rows against the reference, and that the path was taken.
    import mmap

    import hfprep.pack.packers as packers

    if not hasattr(mmap, "MADV_NOHUGEPAGE"):
        pytest.skip("no madvise(MADV_NOHUGEPAGE) on this platform: outputs are plain np.empty")
    monkeypatch.setattr(packers, "_OUTPUT_MMAP_MIN", 0)
    rng = np.random.default_rng(7)
    lengths = np.clip(np.rint(rng.lognormal(np.log(30), 1.0, 300)), 1, 200).astype(int)
    masks = rng.random(int(lengths.sum())) < 0.8
    for pad in (True, False):
        got = pack_bfd_flat(*flat_docs(lengths, masks), 64, PAD, overflow="split", pad=pad)
        assert isinstance(got.input_ids.base, memoryview) and got.input_ids.flags.writeable
        assert as_tuples(got) == ref_pack(lengths, masks, 64, "split", pad)
