"""Packers: the seed's hand-made examples verbatim, conservation, and hypothesis properties vs slow references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfprep import ConfigError, pack_dense, pack_no_incomplete, pack_sequences, position_fix_helper
from hfprep.pack.packers import pack_dense_flat, pack_no_incomplete_flat, rows_to_flat


def seed_examples():
    return [
        {
            "input_ids": np.array([1, 2, 3, 4, 5], dtype=np.uint32),
            "loss_mask": np.ones(5, dtype=np.bool_),
            "position_ids": np.arange(5, dtype=np.uint32),
        },
        {
            "input_ids": np.array([0, 1], dtype=np.uint32),
            "loss_mask": np.ones(2, dtype=np.bool_),
            "position_ids": np.arange(2, dtype=np.uint32),
        },
        {
            "input_ids": np.array([10, 10], dtype=np.uint32),
            "loss_mask": np.ones(2, dtype=np.bool_),
            "position_ids": np.arange(2, dtype=np.uint32),
        },
        {
            "input_ids": np.array([11], dtype=np.uint32),
            "loss_mask": np.ones(1, dtype=np.bool_),
            "position_ids": np.arange(1, dtype=np.uint32),
        },
    ]


def test_position_fix_helper_seed_examples():
    np.testing.assert_array_equal(position_fix_helper([2, 3, 4, 0, 1, 2, 3]), [0, 1, 2, 0, 1, 2, 3])
    np.testing.assert_array_equal(position_fix_helper([4, 0, 1, 0]), [0, 0, 1, 0])
    assert position_fix_helper([]).shape == (0,)
    assert position_fix_helper(np.array([7], np.uint32)).dtype == np.uint32


def test_pack_dense_seed_example():
    result = pack_dense(seed_examples(), 4)
    assert len(result) == 2
    np.testing.assert_array_equal(result[0]["input_ids"], [1, 2, 3, 4])
    np.testing.assert_array_equal(result[1]["input_ids"], [5, 0, 1, 10])
    np.testing.assert_array_equal(result[0]["position_ids"], [0, 1, 2, 3])
    np.testing.assert_array_equal(result[1]["position_ids"], [0, 0, 1, 0])


def test_pack_no_incomplete_seed_example():
    result = pack_no_incomplete(seed_examples(), 4, 0)
    assert len(result) == 2
    np.testing.assert_array_equal(result[0]["input_ids"], [0, 1, 10, 10])
    np.testing.assert_array_equal(result[0]["position_ids"], [0, 1, 0, 1])
    np.testing.assert_array_equal(result[0]["loss_mask"], [True, True, True, True])
    np.testing.assert_array_equal(result[1]["input_ids"], [11, 0, 0, 0])
    np.testing.assert_array_equal(result[1]["position_ids"], [0, 0, 0, 0])
    np.testing.assert_array_equal(result[1]["loss_mask"], [True, False, False, False])


def test_pack_sequences_dispatch_and_errors():
    assert len(pack_sequences(seed_examples(), 4, 0, "dense")) == 2
    assert len(pack_sequences(seed_examples(), 4, 0, "no_incomplete")) == 2
    with pytest.raises(ConfigError, match="not supported"):
        pack_sequences(seed_examples(), 4, 0, "random")
    with pytest.raises(ConfigError, match="seq_len"):
        pack_dense(seed_examples(), 1)
    with pytest.raises(ConfigError, match="seq_len"):
        pack_no_incomplete(seed_examples(), 0, 0)


def test_dense_stats_count_the_tail():
    packed = pack_dense_flat(*rows_to_flat(seed_examples()), 4)
    s = packed.stats
    assert (s.tokens_in, s.tokens_out, s.tokens_dropped) == (10, 8, 2)
    assert s.docs_truncated == 1  # [10, 10] is cut after its first token
    assert s.docs_dropped == 1  # [11] lies entirely in the tail
    assert s.tokens_in == s.tokens_out + s.tokens_dropped


def test_no_incomplete_stats_count_dropped_docs():
    s = pack_no_incomplete_flat(*rows_to_flat(seed_examples()), 4, 0).stats
    assert (s.docs_dropped, s.tokens_dropped, s.pad_tokens, s.rows) == (1, 5, 3, 2)
    assert s.tokens_in == s.tokens_out + s.tokens_dropped


# ---------------------------------------------------------------------------------------------- slow references


def make_docs(lengths, rng):
    docs, base = [], 100
    for n in lengths:
        docs.append(
            {
                "input_ids": np.arange(base, base + n, dtype=np.uint32),  # unique ids: order is checkable
                "position_ids": np.arange(n, dtype=np.uint32),
                "loss_mask": rng.random(n) < 0.7,
            }
        )
        base += n
    return docs


def ref_dense(docs, seq_len):
    """Plain-Python dense packing: concatenate, cut, rebase the first segment of each row."""
    ids, pos, mask = [], [], []
    for d in docs:
        ids += d["input_ids"].tolist()
        pos += d["position_ids"].tolist()
        mask += d["loss_mask"].tolist()
    rows = []
    for r in range(len(ids) // seq_len):
        sl = slice(r * seq_len, (r + 1) * seq_len)
        p = pos[sl]
        out, base = [], p[0]
        for i, v in enumerate(p):
            if i > 0 and v < p[i - 1]:
                base = v
            out.append(v - base)
        rows.append((ids[sl], out, mask[sl]))
    return rows


def ref_no_incomplete(docs, seq_len, pad):
    rows, cur = [], None
    for d in docs:
        n = len(d["input_ids"])
        if n > seq_len:
            continue
        if cur is None or len(cur[0]) + n > seq_len:
            if cur is not None:
                rows.append(cur)
            cur = ([], [], [])
        cur[0].extend(d["input_ids"].tolist())
        cur[1].extend(d["position_ids"].tolist())
        cur[2].extend(d["loss_mask"].tolist())
    if cur is not None:
        rows.append(cur)
    for r in rows:
        k = seq_len - len(r[0])
        r[0].extend([pad] * k)
        r[1].extend([0] * k)
        r[2].extend([False] * k)
    return rows


lengths_st = st.lists(st.integers(min_value=1, max_value=40), min_size=0, max_size=60)


@settings(max_examples=150, deadline=None)
@given(lengths=lengths_st, seq_len=st.integers(min_value=2, max_value=32), seed=st.integers(0, 2**16))
def test_dense_matches_reference_and_conserves_tokens(lengths, seq_len, seed):
    docs = make_docs(lengths, np.random.default_rng(seed))
    got = pack_dense(docs, seq_len)
    ref = ref_dense(docs, seq_len)
    assert len(got) == len(ref)
    for g, (ids, pos, mask) in zip(got, ref):
        assert g["input_ids"].tolist() == ids
        assert g["position_ids"].tolist() == pos
        assert g["loss_mask"].tolist() == mask
    # conservation: every kept token exactly once, in order (ids are unique and increasing)
    flat = np.concatenate([g["input_ids"] for g in got]) if got else np.zeros(0, np.uint32)
    total = sum(lengths)
    assert flat.tolist() == list(range(100, 100 + (total // seq_len) * seq_len))


def multi_segment_positions(n: int, rng) -> np.ndarray:
    """Positions of an already packed row: several ``0..k-1`` runs (the seed API accepts such rows)."""
    out, left = [], n
    while left:
        k = int(rng.integers(1, left + 1))
        out += list(range(k))
        left -= k
    return np.array(out, dtype=np.uint32)


@settings(max_examples=150, deadline=None)
@given(lengths=lengths_st, seq_len=st.integers(min_value=2, max_value=32), seed=st.integers(0, 2**16))
def test_dense_on_rows_holding_several_segments_matches_the_seed_rule(lengths, seq_len, seed):
    # e.g. positions [0, 1, 2, 0, 1, 2] at seq_len 2 used to wrap to 4294967294 (only the row head was rebased)
    from hfprep.pack.transform import pack_table
    from hfprep.schema import flat_to_table, table_to_flat

    rng = np.random.default_rng(seed)
    docs = make_docs(lengths, rng)
    for d in docs:
        d["position_ids"] = multi_segment_positions(len(d["input_ids"]), rng)
    ref = ref_dense(docs, seq_len)
    got = pack_dense(docs, seq_len)
    assert [[g[k].tolist() for k in ("input_ids", "position_ids", "loss_mask")] for g in got] == [list(r) for r in ref]
    table, _ = pack_table(flat_to_table(*rows_to_flat(docs)), seq_len, 0, pack_dense_flat, check_positions=True)
    ids, pos, _, _ = table_to_flat(table)
    assert pos.tolist() == [p for r in ref for p in r[1]]
    assert ids.tolist() == [i for r in ref for i in r[0]]


@settings(max_examples=150, deadline=None)
@given(lengths=lengths_st, seq_len=st.integers(min_value=2, max_value=32), seed=st.integers(0, 2**16))
def test_no_incomplete_matches_reference_and_keeps_docs_intact(lengths, seq_len, seed):
    docs = make_docs(lengths, np.random.default_rng(seed))
    got = pack_no_incomplete(docs, seq_len, pad_token_id=7)
    ref = ref_no_incomplete(docs, seq_len, 7)
    assert [[g[k].tolist() for k in ("input_ids", "position_ids", "loss_mask")] for g in got] == [list(r) for r in ref]
    # every kept document appears intact in exactly one row
    for d in docs:
        n = len(d["input_ids"])
        hits = [g for g in got if int(d["input_ids"][0]) in g["input_ids"].tolist()]
        if n > seq_len:
            assert not hits
            continue
        assert len(hits) == 1
        row = hits[0]["input_ids"].tolist()
        i = row.index(int(d["input_ids"][0]))
        assert row[i : i + n] == d["input_ids"].tolist()
        assert hits[0]["position_ids"][i : i + n].tolist() == list(range(n))
    for g in got:
        assert len(g["input_ids"]) == seq_len
        assert not g["loss_mask"][g["input_ids"] == 7].any()  # unique ids >= 100: 7 is only ever padding


@settings(max_examples=120, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=40), min_size=0, max_size=50),
    seq_len=st.integers(min_value=2, max_value=32),
    cuts=st.lists(st.integers(min_value=0, max_value=50), max_size=6),
    seed=st.integers(0, 2**16),
)
def test_dense_on_arrow_chunks_equals_flat_packer(lengths, seq_len, cuts, seed):
    """The zero-copy Arrow path (any chunking of the group, empty chunks and sliced chunks included) gives the
    flat packer's rows and stats."""
    import pyarrow as pa

    from hfprep.pack.transform import pack_dense_table
    from hfprep.schema import flat_to_table

    docs = make_docs(lengths, np.random.default_rng(seed))
    ids, pos, mask, offsets = rows_to_flat(docs)
    whole = flat_to_table(ids, pos, mask, offsets)
    bounds = sorted({min(c, len(docs)) for c in cuts} | {0, len(docs)})
    table = pa.Table.from_batches(
        [b for a, z in itertools.pairwise(bounds) for b in whole.slice(a, z - a).to_batches()] or whole.to_batches(),
        schema=whole.schema,
    )
    got, stats = pack_dense_table(table, seq_len)
    ref = pack_dense_flat(ids, pos, mask, offsets, seq_len)
    assert got.to_pylist() == [
        {k: v.tolist() for k, v in r.items()} for r in ref.rows()
    ]
    assert stats.as_dict() == ref.stats.as_dict()
    # and, independently of both packers, the plain-Python dense reference
    assert [(r["input_ids"], r["position_ids"], r["loss_mask"]) for r in got.to_pylist()] == [
        (ids_, pos_, [bool(m) for m in mask_]) for ids_, pos_, mask_ in ref_dense(docs, seq_len)
    ]
    assert str(got.schema.field("input_ids").type) == "list<item: uint32>"
    assert str(got.schema.field("loss_mask").type) == "list<item: bool>"


def test_pack_stats_merge_adds_every_count_and_survives_json():
    import json

    from hfprep import PackStats

    a = PackStats(docs_in=2, tokens_in=10, tokens_out=8, tokens_dropped=2, rows=1, extra={"tail_rows": 1},
                  doc_length_bins={3: 1, 5: 1})
    b = PackStats(docs_in=1, tokens_in=4, tokens_out=4, rows=1, extra={"tail_rows": 2, "x": 1}, doc_length_bins={5: 4})
    m = a.merge(b)
    assert (m.docs_in, m.tokens_in, m.tokens_out, m.tokens_dropped, m.rows) == (3, 14, 12, 2, 2)
    assert m.extra == {"tail_rows": 3, "x": 1}
    assert m.doc_length_bins == {3: 1, 5: 5}
    assert (a.doc_length_bins, b.extra) == ({3: 1, 5: 1}, {"tail_rows": 2, "x": 1})  # inputs untouched
    back = PackStats.from_dict(json.loads(json.dumps(m.as_dict())))
    assert back == m
    assert "doc_length_bins" not in PackStats(rows=1).as_dict()  # only a recording transform adds bins


@pytest.mark.parametrize("cut_inside_a_document", [True, False])
def test_dense_tail_is_the_rest_of_the_group_in_buffers_of_its_own(cut_inside_a_document):
    """Engines keep every group's tail until the final pass: the tail holds the tokens after the last whole row
    (a plain-Python cut here) and none of the group's buffers, so holding it does not hold the group."""
    from hfprep.pack.transform import split_dense_tail
    from hfprep.schema import flat_to_table
    from hfprep.tokenization.pieces import positions_from_offsets

    seq_len = 64
    lengths = [5000, 3000, 40 if cut_inside_a_document else 64 * 10 - 8000 % 64 + 64]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.arange(int(offsets[-1]), dtype=np.uint32)
    group = flat_to_table(ids, positions_from_offsets(offsets), np.ones(len(ids), np.bool_), offsets)
    head, tail = split_dense_tail(group, seq_len)
    cut = int(offsets[-1]) // seq_len * seq_len
    tail_ids = list(itertools.chain.from_iterable(tail.column("input_ids").to_pylist()))
    assert tail_ids == ids[cut:].tolist()
    assert sum(len(r) for r in head.column("input_ids").to_pylist()) == cut
    assert tail.get_total_buffer_size() < 16 * (len(tail_ids) + 8 * tail.num_rows + 64)
