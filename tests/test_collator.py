"""DataCollatorForPackedLM: labels, positions, padding, the three attention modes, input formats, bad input.

Expected values come from hand-worked cases and from a plain-Python reference collator written here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hfprep.errors import ConfigError, DataError
from hfprep.pack.packers import pack_dense, pack_no_incomplete
from hfprep.train.collator import DataCollatorForPackedLM, batch_nbytes, trailing_padding_start
from hfprep.train.torch_data import LMDataset

PAD = 0  # the fixture tokenizer's eos, hfprep's default pad id

# Two rows of 8: row 0 = doc [5, 6, 0] + doc [7, 8, 0] + 2 pad; row 1 = tail of a cut doc [9, 0] + doc [4, 3, 2, 0]
# + doc [11, 0] whose first token is masked (like an SFT row's <user>).
HAND = [
    {
        "input_ids": [5, 6, 0, 7, 8, 0, 0, 0],
        "position_ids": [0, 1, 2, 0, 1, 2, 0, 0],
        "loss_mask": [True, True, True, False, True, True, False, False],
    },
    {
        "input_ids": [9, 0, 4, 3, 2, 0, 11, 0],
        "position_ids": [0, 1, 0, 1, 2, 3, 0, 1],
        "loss_mask": [True, True, True, True, False, True, False, True],
    },
]


def test_hand_worked_batch():
    b = DataCollatorForPackedLM()(HAND)
    assert sorted(b) == ["input_ids", "labels", "position_ids", "use_cache"]
    assert b["use_cache"] is False
    for k in ("input_ids", "labels", "position_ids"):
        assert b[k].dtype == torch.int64 and b[k].shape == (2, 8)
    assert b["input_ids"].tolist() == [r["input_ids"] for r in HAND]
    # -100 at every segment start and wherever loss_mask is False; not pre-shifted.
    assert b["labels"].tolist() == [
        [-100, 6, 0, -100, 8, 0, -100, -100],
        [-100, 0, -100, 3, -100, 0, -100, 0],
    ]
    # Row 0's two pad tokens become one segment (0, 1); row 1 has no padding (it ends with a scored token).
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1], [0, 1, 0, 1, 2, 3, 0, 1]]


def test_cross_document_labels_reproduce_the_seed_targets():
    b = DataCollatorForPackedLM(cross_document_labels=True)(HAND)
    ds = LMDataset([{k: np.asarray(v) for k, v in r.items()} for r in HAND])
    for r in range(2):
        ex = ds[r]
        # The seed scores target t+1 iff loss_mask[t+1]: exactly the non-ignored labels shifted by one.
        seed = torch.where(ex["loss_mask"], ex["labels"], torch.full_like(ex["labels"], -100))
        assert b["labels"][r, 1:].tolist() == seed.tolist()


def reference_collate(rows: list[dict], pad_token_id: int | None = None) -> dict[str, list[list[int]]]:
    """Plain-Python reference of the documented rules (position_ids mode)."""
    out = {"input_ids": [], "labels": [], "position_ids": []}
    for row in rows:
        ids = [int(x) for x in row["input_ids"]]
        pos = [int(x) for x in row["position_ids"]]
        loss = [bool(x) for x in row["loss_mask"]]
        n = len(ids)
        pad_from = n
        while pad_from > 0 and pos[pad_from - 1] == 0 and not loss[pad_from - 1] and (
            pad_token_id is None or ids[pad_from - 1] == pad_token_id
        ):
            pad_from -= 1
        new_pos = pos[:pad_from] + list(range(n - pad_from))
        labels = [ids[t] if loss[t] and new_pos[t] != 0 else -100 for t in range(n)]
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["position_ids"].append(new_pos)
    return out


def random_docs(rng: np.random.Generator, n: int) -> list[dict]:
    docs = []
    for _ in range(n):
        length = int(rng.integers(1, 12))
        ids = rng.integers(1, 50, size=length).astype(np.uint32)
        ids[-1] = PAD  # every strategy ends a document with a scored eos
        loss = rng.random(length) < 0.7
        loss[-1] = True
        docs.append({"input_ids": ids, "position_ids": np.arange(length, dtype=np.uint32), "loss_mask": loss})
    return docs


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("packer", ["dense", "no_incomplete"])
def test_matches_plain_python_reference(seed, packer):
    rng = np.random.default_rng(seed)
    docs = random_docs(rng, 40)
    rows = pack_dense(docs, 16) if packer == "dense" else pack_no_incomplete(docs, 16, PAD)
    for pad_id in (None, PAD):
        got = DataCollatorForPackedLM(pad_token_id=pad_id)(rows)
        want = reference_collate(rows, pad_id)
        for k, v in want.items():
            assert got[k].tolist() == v, (k, pad_id)
        # Token conservation: every input token is there, in order.
        assert got["input_ids"].reshape(-1).tolist() == [int(x) for r in rows for x in r["input_ids"]]


def test_padding_is_one_segment_for_transformers_detection():
    from transformers.masking_utils import find_packed_sequence_indices

    docs = random_docs(np.random.default_rng(7), 30)
    rows = pack_no_incomplete(docs, 24, PAD)
    b = DataCollatorForPackedLM()(rows)
    seg = find_packed_sequence_indices(b["position_ids"])
    longest_pad = 0
    for r, row in enumerate(rows):
        pos, loss = row["position_ids"].tolist(), row["loss_mask"].tolist()
        pad_from = len(pos)
        while pad_from and pos[pad_from - 1] == 0 and not loss[pad_from - 1]:
            pad_from -= 1
        longest_pad = max(longest_pad, len(pos) - pad_from)
        expected = sum(p == 0 for p in pos[:pad_from]) + (pad_from < len(pos))
        assert int(seg[r, -1]) + 1 == expected
    assert longest_pad >= 3


def test_pad_token_id_restricts_padding_detection():
    row = {"input_ids": [5, 0, 7, 9], "position_ids": [0, 1, 0, 0], "loss_mask": [True, True, False, False]}
    # Without a pad id the last two tokens are one padding segment; with pad id 9 only the last one is padding.
    assert DataCollatorForPackedLM()([row])["position_ids"].tolist() == [[0, 1, 0, 1]]
    assert DataCollatorForPackedLM(pad_token_id=9)([row])["position_ids"].tolist() == [[0, 1, 0, 0]]
    assert trailing_padding_start(np.array([[0, 0]]), np.array([[False, False]])).tolist() == [0]


# ------------------------------------------------------------------------------------------- input formats


def test_same_batch_for_every_input_format(tmp_path):
    from datasets import Dataset, load_dataset

    from hfprep.tokenization.stage import tokenized_features

    rows = pack_no_incomplete(random_docs(np.random.default_rng(3), 20), 16, PAD)
    collator = DataCollatorForPackedLM()
    want = collator(rows)
    ds = Dataset.from_list([{k: v.tolist() for k, v in r.items()} for r in rows], features=tokenized_features())
    ds.to_parquet(str(tmp_path / "d.parquet"))
    loaded = load_dataset("parquet", data_files=str(tmp_path / "d.parquet"), split="train")
    variants = {
        "lists": [{k: v.tolist() for k, v in r.items()} for r in rows],
        "torch_tensors": [{k: torch.from_numpy(v.astype(np.int64) if v.dtype != bool else v) for k, v in r.items()}
                          for r in rows],
    }
    for fmt in (None, "numpy", "torch"):
        variants[f"dataset_{fmt}"] = list(ds.with_format(fmt))
        variants[f"load_dataset_{fmt}"] = list(loaded.with_format(fmt))
    for name, feats in variants.items():
        got = collator(feats)
        assert got.keys() == want.keys(), name
        for k in ("input_ids", "labels", "position_ids"):
            assert got[k].dtype == torch.int64, (name, k)
            assert torch.equal(got[k], want[k]), (name, k)


# ------------------------------------------------------------------------------------------- modes


def test_flash_varlen_layout():
    b = DataCollatorForPackedLM(attention="flash_varlen")(HAND)
    ref = reference_collate(HAND)
    assert b["input_ids"].shape == (1, 16)
    assert b["labels"][0].tolist() == ref["labels"][0] + ref["labels"][1]
    assert b["position_ids"][0].tolist() == ref["position_ids"][0] + ref["position_ids"][1]
    assert b["cu_seq_lens_q"].dtype == torch.int32
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 6, 8, 10, 14, 16]
    assert b["cu_seq_lens_k"].tolist() == b["cu_seq_lens_q"].tolist()
    assert b["max_length_q"] == b["max_length_k"] == 4
    assert isinstance(b["max_length_q"], int)


def test_flash_varlen_unequal_rows_drop_padding_and_multiple():
    short = {"input_ids": [1, 0, 0], "position_ids": [0, 1, 0], "loss_mask": [True, True, False]}
    b = DataCollatorForPackedLM(attention="flash_varlen", drop_padding=True, pad_token_id=PAD, pad_to_multiple_of=8)(
        [HAND[0], short]
    )
    # Row 0 without its 2 pad tokens (6) + row 1 without its pad token (2) = 8, already a multiple of 8.
    assert b["input_ids"][0].tolist() == [5, 6, 0, 7, 8, 0, 1, 0]
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 6, 8]
    b = DataCollatorForPackedLM(attention="flash_varlen", pad_token_id=PAD, pad_to_multiple_of=8)([HAND[0], short])
    # 8 + 3 = 11 tokens, padded to 16 with one more ignored segment of 5.
    assert b["input_ids"].shape == (1, 16)
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 6, 8, 10, 11, 16]
    assert b["labels"][0, 11:].tolist() == [-100] * 5
    assert b["position_ids"][0, 11:].tolist() == [0, 1, 2, 3, 4]


def slow_block_mask(pos: list[int]) -> list[list[bool]]:
    n = len(pos)
    seg, cur = [], -1
    for p in pos:
        cur += p == 0
        seg.append(cur)
    return [[j <= i and seg[i] == seg[j] for j in range(n)] for i in range(n)]


def test_4d_mask_float_and_bool():
    ref = reference_collate(HAND)
    bf = DataCollatorForPackedLM(attention="4d")(HAND)
    bb = DataCollatorForPackedLM(attention="4d", mask_dtype=torch.bool)(HAND)
    assert bf["attention_mask"].shape == (2, 1, 8, 8) and bf["attention_mask"].dtype == torch.float32
    assert bb["attention_mask"].dtype == torch.bool
    for r in range(2):
        want = slow_block_mask(ref["position_ids"][r])
        assert bb["attention_mask"][r, 0].tolist() == want
        m = bf["attention_mask"][r, 0]
        assert (m == 0).tolist() == want
        assert bool((m[~torch.tensor(want)] == torch.finfo(torch.float32).min).all())
    assert torch.equal(bf["position_ids"], bb["position_ids"])


def test_pad_to_multiple_of_and_padding():
    c = DataCollatorForPackedLM(pad_token_id=PAD, pad_to_multiple_of=5)
    b = c(HAND)
    assert b["input_ids"].shape == (2, 10)
    assert b["input_ids"][:, 8:].tolist() == [[PAD, PAD], [PAD, PAD]]
    # Row 0's own padding and the added tokens form one segment; row 1 gets a new 2-token padding segment.
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 0, 1, 0, 1]]
    assert b["labels"][:, 8:].tolist() == [[-100, -100], [-100, -100]]

    short = {"input_ids": [1, 0], "position_ids": [0, 1], "loss_mask": [True, True]}
    with pytest.raises(DataError, match="different lengths"):
        DataCollatorForPackedLM()([HAND[0], short])
    b = DataCollatorForPackedLM(padding=True, pad_token_id=PAD)([HAND[0], short])
    assert b["input_ids"][1].tolist() == [1, 0] + [PAD] * 6
    assert b["position_ids"][1].tolist() == [0, 1, 0, 1, 2, 3, 4, 5]
    assert b["labels"][1].tolist() == [-100, 0] + [-100] * 6


# ------------------------------------------------------------------------------------------- bad input


def test_missing_columns():
    rows = [{"input_ids": r["input_ids"]} for r in HAND]
    with pytest.raises(DataError, match="remove_unused_columns=False"):
        DataCollatorForPackedLM()(rows)
    with pytest.raises(DataError, match="loss_mask"):
        DataCollatorForPackedLM()([{k: v for k, v in r.items() if k != "loss_mask"} for r in HAND])
    b = DataCollatorForPackedLM(on_missing_columns="single_segment")(rows)
    assert b["position_ids"].tolist() == [list(range(8))] * 2
    assert b["labels"].tolist() == [[-100, *r["input_ids"][1:]] for r in HAND]
    # Missing loss_mask only: positions (segments) kept, loss everywhere else.
    b = DataCollatorForPackedLM(on_missing_columns="single_segment")(
        [{k: v for k, v in r.items() if k != "loss_mask"} for r in HAND]
    )
    assert b["labels"][0].tolist() == [-100, 6, 0, -100, 8, 0, -100, -100]
    with pytest.raises(DataError, match="input_ids"):
        DataCollatorForPackedLM()([{"text": "x"}])
    with pytest.raises(DataError, match="empty batch"):
        DataCollatorForPackedLM()([])


def test_bad_positions():
    bad_start = {"input_ids": [1, 2, 3], "position_ids": [2, 3, 4], "loss_mask": [True] * 3}
    with pytest.raises(DataError, match="batch row 1: position_ids start at 2"):
        DataCollatorForPackedLM()([{"input_ids": [1, 2, 3], "position_ids": [0, 1, 2], "loss_mask": [True] * 3},
                                   bad_start])
    gap = {"input_ids": [1, 2, 3], "position_ids": [0, 1, 3], "loss_mask": [True] * 3}
    with pytest.raises(DataError, match="batch row 0, token 2: position 3 follows 1"):
        DataCollatorForPackedLM()([gap])
    # validate=False leaves the data as given (documented escape hatch for pre-validated data).
    assert DataCollatorForPackedLM(validate=False)([gap])["position_ids"].tolist() == [[0, 1, 3]]


def test_columns_of_different_lengths_in_a_row():
    bad = dict(HAND[1], loss_mask=HAND[1]["loss_mask"][:-1])
    with pytest.raises(DataError, match="batch row 1: loss_mask has 7 values but input_ids has 8"):
        DataCollatorForPackedLM()([HAND[0], bad])


def test_attention_mask_and_labels_columns():
    ones = [dict(r, attention_mask=[1] * 8) for r in HAND]
    b = DataCollatorForPackedLM()(ones)
    assert "attention_mask" not in b
    assert torch.equal(b["labels"], DataCollatorForPackedLM()(HAND)["labels"])
    zeros = [dict(HAND[0], attention_mask=[1] * 6 + [0, 0])]
    with pytest.raises(DataError, match="batch row 0: an 'attention_mask' column"):
        DataCollatorForPackedLM()(zeros)
    with pytest.raises(DataError, match="labels"):
        DataCollatorForPackedLM()([dict(HAND[0], labels=HAND[0]["input_ids"])])


def test_config_errors():
    with pytest.raises(ConfigError, match="attention="):
        DataCollatorForPackedLM(attention="2d")
    with pytest.raises(ConfigError, match="pad_token_id"):
        DataCollatorForPackedLM(pad_to_multiple_of=8)
    with pytest.raises(ConfigError, match="pad_token_id"):
        DataCollatorForPackedLM(padding=True)
    with pytest.raises(ConfigError, match="drop_padding"):
        DataCollatorForPackedLM(drop_padding=True)
    with pytest.raises(ConfigError, match="pad_to_multiple_of"):
        DataCollatorForPackedLM(pad_to_multiple_of=0, pad_token_id=0)
    with pytest.raises(ConfigError, match="on_missing_columns"):
        DataCollatorForPackedLM(on_missing_columns="ignore")
    with pytest.raises(ConfigError, match="mask_dtype"):
        DataCollatorForPackedLM(attention="4d", mask_dtype=torch.int64)
    with pytest.raises(ConfigError, match="return_tensors"):
        DataCollatorForPackedLM()(HAND, return_tensors="np")


def test_batch_nbytes():
    b = DataCollatorForPackedLM(disable_cache=False)(HAND)
    assert batch_nbytes(b) == 3 * 2 * 8 * 8
