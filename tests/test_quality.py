"""Packing quality report: against a plain-Python reference on random rows, and against the packers' own counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

import hfprep.pack.bfd  # noqa: F401  (registers "bfd" in PACKERS)
from hfprep import DataError, PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.output.quality import format_report, histogram_edges, losses_by_reason, packing_report
from hfprep.pack.bfd import pack_bfd_flat
from hfprep.pack.packers import pack_dense_flat, pack_no_incomplete_flat
from hfprep.schema import flat_to_table


def ref_report(rows, seq_len):
    """Plain Python: trailing (position 0, loss False) run = padding; segments start at position 0 / row start."""
    seg_lens, seg_per_row, pad, real = [], [], 0, 0
    for ids, pos, loss in rows:
        end = len(ids)
        while end > 0 and pos[end - 1] == 0 and not loss[end - 1]:
            end -= 1
        pad += len(ids) - end
        real += end
        count = 0
        for i in range(end):
            if i == 0 or pos[i] == 0:
                seg_lens.append(0)
                count += 1
            seg_lens[-1] += 1
        seg_per_row.append(count)
    n_bins = seq_len.bit_length()  # bins [1,2), [2,4), ..., last one up to seq_len
    hist = [0] * n_bins
    for n in seg_lens:
        hist[min(n.bit_length() - 1, n_bins - 1)] += 1
    return {
        "rows": len(rows),
        "tokens": real,
        "pad_tokens": pad,
        "fill": real / (len(rows) * seq_len) if rows else 0.0,
        "segments": len(seg_lens),
        "per_row": (min(seg_per_row, default=0), max(seg_per_row, default=0)),
        "seg_minmax": (min(seg_lens, default=0), max(seg_lens, default=0)),
        "hist": hist,
    }


def table_of(rows):
    return pa.table(
        {
            "input_ids": pa.array([list(r[0]) for r in rows], pa.list_(pa.uint32())),
            "position_ids": pa.array([list(r[1]) for r in rows], pa.list_(pa.uint32())),
            "loss_mask": pa.array([list(r[2]) for r in rows], pa.list_(pa.bool_())),
        }
    )


def check_against_ref(report, rows, seq_len):
    ref = ref_report(rows, seq_len)
    assert report["rows"] == ref["rows"]
    assert report["tokens"] == ref["tokens"] and report["pad_tokens"] == ref["pad_tokens"]
    assert report["fill_ratio"] == pytest.approx(ref["fill"])
    assert report["segments"]["total"] == ref["segments"]
    assert (report["segments"]["per_row_min"], report["segments"]["per_row_max"]) == ref["per_row"]
    assert (report["segment_lengths"]["min"], report["segment_lengths"]["max"]) == ref["seg_minmax"]
    assert [b["count"] for b in report["segment_lengths"]["histogram"]] == ref["hist"]
    assert sum(b["tokens"] for b in report["segment_lengths"]["histogram"]) == ref["tokens"]


def test_hand_worked_rows():
    rows = [
        ([5, 6, 7, 0, 0], [0, 1, 0, 0, 0], [True, True, True, False, False]),  # 2 segments + 2 pad
        ([1, 2, 3, 4, 5], [3, 4, 0, 1, 2], [True] * 5),  # row starts mid-document: still a segment
        ([0, 0, 0, 0, 0], [0] * 5, [False] * 5),  # an all-pad row
    ]
    r = packing_report(table_of(rows), 5)
    assert (r["rows"], r["tokens"], r["pad_tokens"]) == (3, 8, 7)
    assert r["fill_ratio"] == pytest.approx(8 / 15)
    assert r["segments"] == {"total": 4, "per_row_mean": 4 / 3, "per_row_min": 0, "per_row_max": 2}
    assert (r["segment_lengths"]["min"], r["segment_lengths"]["max"]) == (1, 3)
    # edges for seq_len 5: [1,2) [2,4) [4,6); segments of lengths 2, 1, 2, 3
    assert histogram_edges(5) == [1, 2, 4, 6]
    assert [(b["count"], b["tokens"]) for b in r["segment_lengths"]["histogram"]] == [(1, 1), (3, 7), (0, 0)]
    assert r["padded"] is True and r["rows_over_seq_len"] == 0 and r["loss_tokens"] == 8


def test_pad_token_id_disambiguates_masked_one_token_segment():
    # a real trailing 1-token segment with loss False (e.g. a masked <user> token) is padding unless the id says no
    rows = [([5, 6, 9, 0], [0, 1, 0, 0], [True, True, False, False])]
    assert packing_report(table_of(rows), 4)["pad_tokens"] == 2
    r = packing_report(table_of(rows), 4, pad_token_id=0)
    assert r["pad_tokens"] == 1 and r["segments"]["total"] == 2


@st.composite
def random_rows(draw):
    seq_len = draw(st.integers(1, 20))
    n = draw(st.integers(0, 12))
    rows = []
    for _ in range(n):
        length = draw(st.integers(0, seq_len))
        pos = draw(st.lists(st.integers(0, 3), min_size=length, max_size=length))
        loss = draw(st.lists(st.booleans(), min_size=length, max_size=length))
        rows.append(([9] * length, pos, loss))
    return seq_len, rows


@settings(max_examples=150, deadline=None)
@given(random_rows())
def test_matches_reference_on_random_rows(inp):
    seq_len, rows = inp
    check_against_ref(packing_report(table_of(rows), seq_len), rows, seq_len)


def packed_input(seed=0, n=300, max_len=150):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    ids = rng.integers(1, 500, total).astype(np.uint32)
    pos = np.concatenate([np.arange(x) for x in lengths]).astype(np.uint32)
    return ids, pos, np.ones(total, bool), offsets


@pytest.mark.parametrize("packer", ["bfd_pad", "bfd_nopad", "no_incomplete", "dense"])
def test_agrees_with_packer_counts(packer):
    seq_len = 64
    args = packed_input()
    if packer == "bfd_pad":
        p = pack_bfd_flat(*args, seq_len, 0, overflow="split")
    elif packer == "bfd_nopad":
        p = pack_bfd_flat(*args, seq_len, 0, overflow="truncate", pad=False)
    elif packer == "no_incomplete":
        p = pack_no_incomplete_flat(*args, seq_len, 0)
    else:
        p = pack_dense_flat(*args, seq_len, 0)
    table = flat_to_table(p.input_ids, p.position_ids, p.loss_mask, p.row_offsets)
    stats = p.stats.as_dict()
    r = packing_report(Dataset(table), seq_len, stats)
    rows = [(x["input_ids"].tolist(), x["position_ids"].tolist(), x["loss_mask"].tolist()) for x in p.rows()]
    check_against_ref(r, rows, seq_len)
    # independent counts from the packer
    assert r["tokens"] == p.stats.tokens_out and r["pad_tokens"] == p.stats.pad_tokens
    assert r["rows"] == p.stats.rows
    if packer.startswith("bfd"):
        assert r["segments"]["total"] == p.stats.extra["segments"]
    if packer != "bfd_nopad":
        assert r["fill_ratio"] == pytest.approx(p.stats.fill_ratio)
    else:
        assert r["padded"] is False and "variable-length" in format_report(r)
    assert r["losses"]["tokens_in"] == p.stats.tokens_in
    assert r["losses"]["tokens_lost"] == p.stats.tokens_dropped


def test_losses_by_reason_and_format():
    args = packed_input(seed=1, max_len=200)
    lengths = np.diff(args[3])
    seq_len = 100
    long = lengths > seq_len
    t = pack_bfd_flat(*args, seq_len, 0, overflow="truncate").stats.as_dict()
    lt = losses_by_reason(t)
    assert lt["truncated"] == {"docs": int(long.sum()), "tokens": int((lengths[long] - seq_len).sum())}
    assert lt["dropped"]["tokens"] == 0
    d = losses_by_reason(pack_bfd_flat(*args, seq_len, 0, overflow="drop").stats.as_dict())
    assert d["dropped"] == {"docs": int(long.sum()), "tokens": int(lengths[long].sum())}
    s = losses_by_reason(pack_bfd_flat(*args, seq_len, 0, overflow="split").stats.as_dict())
    assert s["tokens_lost"] == 0
    assert s["split"] == {
        "docs": int(long.sum()),
        "tokens": int(lengths[long].sum()),
        "pieces": int((-(-lengths[long] // seq_len)).sum()),
    }
    assert losses_by_reason(None) == {}
    p = pack_bfd_flat(*args, seq_len, 0, overflow="drop")
    text = format_report(packing_report(flat_to_table(p.input_ids, p.position_ids, p.loss_mask, p.row_offsets),
                                        seq_len, p.stats.as_dict()))
    assert f"dropped {int(long.sum()):,} docs / {int(lengths[long].sum()):,} tokens" in text
    assert f"fill {p.stats.fill_ratio:.4f}" in text


def test_report_from_prepare_transform(tokenizer_path):
    rng = np.random.default_rng(2)
    words = ["alpha", "beta", "import", "numpy", "\n", "def"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 30)))) for _ in range(120)]
    cfg = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain", packing_strategy="bfd", tokenizer_name=tokenizer_path, seq_len=32,
        num_reduce_chunks=2, packing_kwargs={"overflow": "split"},
    )
    t = PrepareForTrainingTransform(cfg)
    out = t.run(Dataset.from_dict({"content": texts}))
    r = packing_report(out.select(range(len(out) - 1, -1, -1)), 32, t.stats)  # an indices mapping works too
    assert r["tokens"] == t.stats["tokens_out"] == t.stats["tokens_in"]
    assert r["segments"]["total"] == t.stats["segments"]
    assert r["losses"]["empty_or_invalid"] == {"rows": 0}
    assert "input rows without a document: 0" in format_report(r)


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="lack column"):
        packing_report(pa.table({"input_ids": [[1]]}), 4)
    with pytest.raises(DataError, match="Dataset or a pyarrow.Table"):
        packing_report([{"input_ids": [1]}], 4)
    with pytest.raises(DataError, match="seq_len"):
        packing_report(pa.table({"input_ids": [[1]]}), 0)
    bad = pa.table({"input_ids": [[1, 2]], "position_ids": [[0]], "loss_mask": [[True, True]]})
    with pytest.raises(DataError, match="same length"):
        packing_report(bad, 4)
