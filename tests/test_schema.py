"""The row contract: one padding rule and one mask, and every packer's output passes ``validate_folder``.

The hypothesis test runs every packer x overflow policy x pad setting on random documents (length-1 documents,
eos-only documents with and without loss, documents that already hold several segments, ids that collide with the
pad id), writes the folder with a card whose numbers come from the packer's own stats, and requires
``validate_folder``, the quality report and ``inspect``'s rendering to agree with them.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hfprep.errors import ConfigError
from hfprep.output.inspect_cmd import render_row
from hfprep.output.layout import write_parquet
from hfprep.output.quality import packing_report
from hfprep.output.validate import validate_folder
from hfprep.pack.packers import get_packer, layout_rows, pack_dense, pack_no_incomplete_flat
from hfprep.schema import (
    causal_mask_from_positions,
    flat_to_table,
    output_is_padded,
    padding_mask,
    padding_start,
    row_features,
    table_to_flat,
)

PAD = 0  # the eos id too, as hfprep defaults it
VOCAB = 6

CONFIGS = [("dense", {}), ("no_incomplete", {})] + [
    ("bfd", {"overflow": o, "pad": p}) for o in ("split", "truncate", "drop") for p in (True, False)
]


@st.composite
def documents(draw):
    """Documents as lists of segments of ``(id, loss)``; small ids so the pad id shows up everywhere."""
    token = st.tuples(st.integers(0, VOCAB - 1), st.booleans())
    segment = st.lists(token, min_size=1, max_size=7)
    doc = st.one_of(
        st.lists(segment, min_size=1, max_size=1),
        st.lists(segment, min_size=2, max_size=3),  # an already packed row: several segments
        st.sampled_from([[[(PAD, True)]], [[(PAD, False)]], [[(3, False)]], [[(4, True), (PAD, True)]]]),
    )
    return draw(st.lists(doc, min_size=0, max_size=14))


def flatten(docs):
    ids, pos, loss, offsets = [], [], [], [0]
    for doc in docs:
        for seg in doc:
            ids += [t for t, _ in seg]
            loss += [m for _, m in seg]
            pos += list(range(len(seg)))
        offsets.append(len(ids))
    return (np.array(ids, np.uint32), np.array(pos, np.uint32), np.array(loss, np.bool_), np.array(offsets, np.int64))


def slow_padding(ids, pos, loss, offsets):
    """The padding rule, written out token by token: walk back from each row's end over pad id / 0 / no loss."""
    out = [False] * len(ids)
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        i = b - 1
        while i >= a and ids[i] == PAD and pos[i] == 0 and not loss[i]:
            out[i] = True
            i -= 1
    return out


def write_folder(root: Path, packed, strategy: str, kwargs: dict, seq_len: int) -> None:
    table = flat_to_table(packed.input_ids, packed.position_ids, packed.loss_mask, packed.row_offsets)
    write_parquet(table, root / "data" / "train-00000-of-00001.parquet", row_features())
    s = packed.stats
    meta = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "hfprep": {
            "tokenizer": {"pad_token_id": PAD, "vocab_size": VOCAB},
            "seq_len": seq_len,
            "packing": strategy,
            "packing_kwargs": kwargs,
            # What the packer says it wrote; validate recomputes these from the rows with the padding rule.
            "stats": {"train": {"rows": s.rows, "tokens": s.tokens_out, "pad_tokens": s.pad_tokens,
                                "loss_tokens": int(packed.loss_mask.sum())}},
        },
    }
    (root / "README.md").write_text("---\n" + yaml.safe_dump(meta) + "---\n\nrandom documents\n")


@settings(max_examples=120, deadline=None)
@given(documents(), st.integers(2, 9), st.sampled_from(CONFIGS))
def test_every_packer_output_validates_and_everyone_counts_the_same_padding(docs, seq_len, config):
    strategy, kwargs = config
    ids, pos, loss, offsets = flatten(docs)
    packed = get_packer(strategy)(ids, pos, loss, offsets, seq_len, PAD, **kwargs)
    s = packed.stats
    assert s.tokens_in == len(ids) == s.tokens_out + s.tokens_dropped
    padded = output_is_padded(strategy, kwargs)
    o = packed.row_offsets
    if padded:
        assert s.tokens_out + s.pad_tokens == s.rows * seq_len
        # The rule finds exactly the padding the packer wrote (independent, token-by-token walk).
        slow = slow_padding(packed.input_ids.tolist(), packed.position_ids.tolist(), packed.loss_mask.tolist(), o)
        assert sum(slow) == s.pad_tokens
        assert padding_mask(packed.input_ids, packed.position_ids, packed.loss_mask, o, PAD).tolist() == slow
    else:
        assert s.pad_tokens == 0
    if s.rows == 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_folder(root, packed, strategy, kwargs, seq_len)
        report = validate_folder(root)
        # Random masks are not what a strategy writes (a document or row with no loss): the loss audit judges those
        # (tests/test_audit.py); the row contract must hold for any rows.
        assert not [v for v in report.violations if not v.startswith("loss audit")], report.violations
    assert report.stats["train"]["tokens"] == s.tokens_out
    assert report.stats["train"]["pad_tokens"] == s.pad_tokens
    table = flat_to_table(packed.input_ids, packed.position_ids, packed.loss_mask, o)
    q = packing_report(table, seq_len, s.as_dict(), pad_token_id=PAD, padded=padded)
    assert (q["tokens"], q["pad_tokens"]) == (s.tokens_out, s.pad_tokens)
    shown = 0
    for r in packed.rows():
        head = render_row(r["input_ids"], r["position_ids"], r["loss_mask"], None, PAD, padded).splitlines()[0]
        shown += int(re.search(r"(\d+) padding token", head).group(1))
    assert shown == s.pad_tokens


def test_a_split_documents_last_piece_that_is_a_lone_eos_with_loss_is_data(tmp_path):
    # seq_len 4: the 5-token document splits into 4 + 1, and its last piece is the eos alone at position 0 with
    # loss (pad id == eos). It lands after [5, eos] in the second row, right before the row's padding.
    ids = np.array([1, 2, 3, 4, PAD, 5, PAD], np.uint32)
    pos = np.array([0, 1, 2, 3, 4, 0, 1], np.uint32)
    packed = get_packer("bfd")(ids, pos, np.ones(7, bool), np.array([0, 5, 7]), 4, PAD)
    assert [r["input_ids"].tolist() for r in packed.rows()] == [[1, 2, 3, 4], [5, PAD, PAD, PAD]]
    assert [r["loss_mask"].tolist() for r in packed.rows()][1] == [True, True, True, False]
    assert packed.stats.tokens_out == 7 and packed.stats.pad_tokens == 1
    write_folder(tmp_path, packed, "bfd", {}, 4)
    report = validate_folder(tmp_path)
    assert report.ok, report.violations
    assert (report.stats["train"]["tokens"], report.stats["train"]["pad_tokens"]) == (7, 1)


def test_padding_free_rows_validate(tmp_path):
    ids = np.array([1, 2, 3, PAD, 5, PAD], np.uint32)
    pos = np.array([0, 1, 2, 3, 0, 1], np.uint32)
    packed = get_packer("bfd")(ids, pos, np.ones(6, bool), np.array([0, 4, 6]), 4, PAD, pad=False)
    assert np.diff(packed.row_offsets).tolist() == [4, 2]
    write_folder(tmp_path, packed, "bfd", {"pad": False}, 4)
    report = validate_folder(tmp_path)
    assert report.ok, report.violations


def test_a_lone_pad_like_document_is_left_out_of_padded_rows():
    # The 1-token document [PAD] with no loss would be indistinguishable from padding at the end of a row.
    ids = np.array([7, 8, PAD], np.uint32)
    pos = np.array([0, 1, 0], np.uint32)
    loss = np.array([True, True, False])
    packed = pack_no_incomplete_flat(ids, pos, loss, np.array([0, 2, 3]), 4, PAD)
    assert packed.input_ids.tolist() == [7, 8, PAD, PAD]
    assert (packed.stats.tokens_out, packed.stats.pad_tokens, packed.stats.docs_dropped) == (2, 2, 1)
    assert packed.stats.extra["padding_like_tokens"] == 1


def test_padding_start_matches_padding_mask_per_row():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 2, size=(20, 7))
    loss = rng.random((20, 7)) < 0.3
    ids = rng.integers(0, 2, size=(20, 7))
    start = padding_start(ids, pos, loss, 0)
    flat = padding_mask(ids.ravel(), pos.ravel(), loss.ravel(), np.arange(21) * 7, 0).reshape(20, 7)
    assert (7 - flat.sum(axis=1)).tolist() == start.tolist()


def test_causal_mask_from_positions_numpy_and_torch_agree_with_a_slow_reference():
    torch = pytest.importorskip("torch")
    pos = np.array([[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 3, 0]])
    want = np.zeros((2, 6, 6), bool)
    for b in range(2):
        seg = np.cumsum(pos[b] == 0)
        for i in range(6):
            for j in range(i + 1):
                want[b, i, j] = seg[i] == seg[j]
    assert (causal_mask_from_positions(pos) == want).all()
    assert (causal_mask_from_positions(torch.from_numpy(pos)).numpy() == want).all()


def test_pack_dense_rebases_rows_that_already_hold_several_segments():
    row = {"input_ids": np.arange(6, dtype=np.uint32), "position_ids": np.array([0, 1, 2, 0, 1, 2], np.uint32),
           "loss_mask": np.ones(6, bool)}
    # The seed's rule, by hand: cut [0,1][2,0][1,2], each segment rebased to start at 0.
    assert [r["position_ids"].tolist() for r in pack_dense([row], 2)] == [[0, 1], [0, 0], [0, 1]]
    assert [r["position_ids"].tolist() for r in pack_dense([row], 4)] == [[0, 1, 2, 0]]


def test_flat_to_table_cuts_chunks_under_the_list_limit(monkeypatch):
    import hfprep.schema

    monkeypatch.setattr(hfprep.schema, "MAX_LIST_VALUES", 5)
    lengths = [2, 3, 1, 4, 5, 2]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = np.arange(offsets[-1], dtype=np.uint32)
    table = flat_to_table(ids, ids, ids % 2 == 0, offsets)
    assert table.column("input_ids").num_chunks > 1
    assert all(len(c.values) <= 5 for c in table.column("input_ids").chunks)
    want = [ids[a:b].tolist() for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]
    assert table.column("input_ids").to_pylist() == want
    back = table_to_flat(table)
    assert back[0].tolist() == ids.tolist() and back[3].tolist() == offsets.tolist()
    with pytest.raises(ConfigError, match="over Arrow's list limit"):
        flat_to_table(np.zeros(6, np.uint32), np.zeros(6, np.uint32), np.zeros(6, bool), np.array([0, 6]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.booleans(), max_size=13), min_size=1, max_size=12), st.integers(0, 11), st.integers(1, 4))
def test_bool_columns_cross_arrow_bitmaps_exactly(rows, skip, chunks):
    # loss_mask is packed into / unpacked from Arrow's bitmap with numpy: check it against pyarrow's own reading on
    # tables sliced inside a byte and split into several chunks.
    import pyarrow as pa

    lengths = [len(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.array([b for r in rows for b in r], dtype=bool)
    ids = np.arange(offsets[-1], dtype=np.uint32)
    table = flat_to_table(ids, ids, flat, offsets)
    assert table.column("loss_mask").to_pylist() == rows
    cut = np.linspace(0, len(rows), chunks + 1).astype(int)
    chunked = pa.concat_tables([table.slice(a, b - a) for a, b in itertools.pairwise(cut.tolist())]).slice(min(skip, len(rows)))
    want = [b for r in rows[min(skip, len(rows)):] for b in r]
    assert table_to_flat(chunked)[2].tolist() == want
    view = table_to_flat(chunked, constant_mask_as_view=True)[2]
    assert view.tolist() == want
    constant = len(set(want)) <= 1
    assert (view.strides == (0,)) == constant  # a constant mask takes no memory; any other is read in full


def test_bfd_without_a_pad_id_is_an_error_not_padding_with_zero():
    ids = np.array([1, 2, 3], np.uint32)
    with pytest.raises(ConfigError, match="pad_token_id"):
        get_packer("bfd")(ids, np.arange(3, dtype=np.uint32), np.ones(3, bool), np.array([0, 3]), 4, None)
    with pytest.raises(ConfigError, match="pad_token_id"):
        layout_rows(ids, np.arange(3, dtype=np.uint32), np.ones(3, bool), np.array([0]), np.array([3]),
                    np.array([0]), np.array([0]), 1, 4, None, True)


def test_the_collator_and_the_kd_builder_use_the_same_mask():
    torch = pytest.importorskip("torch")
    from hfprep.kd.builder import block_diagonal_mask
    from hfprep.train.collator import DataCollatorForPackedLM

    pos = np.array([0, 1, 2, 0, 1, 0, 0, 1])
    row = {"input_ids": np.arange(1, 9), "position_ids": pos, "loss_mask": np.ones(8, bool)}
    want = causal_mask_from_positions(pos)
    got = DataCollatorForPackedLM(attention="4d", mask_dtype=torch.bool)([row])["attention_mask"][0, 0].numpy()
    assert (got == want).all()
    additive = block_diagonal_mask(torch.from_numpy(pos)[None], torch.float32)[0, 0].numpy()
    assert ((additive == 0) == want).all()
