"""The seed's plain-PyTorch side, with the seed notebook's asserts ported to the tiny fixture tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.train.torch_data import LMDataset, collate_lm, make_attention_mask_from_positions

TEXTS = [
    "A sample text. Hello, World! A test string.",
    "import numpy as np\nimport pandas as pd\n",
    "def f(x):\n    return x * 2\n",
    "How can I help you? Hi! I am fine, thanks.",
    "The quick brown fox jumps over the lazy dog.",
    "for i in range(10):\n    print(i)\n",
]


def slow_mask(pos: list[int]) -> list[list[bool]]:
    """Plain-Python reference: i sees j iff j <= i and no segment start (position 0) lies in (j, i]."""
    n = len(pos)
    return [[j <= i and all(pos[k] != 0 for k in range(j + 1, i + 1)) for j in range(n)] for i in range(n)]


def test_seed_mask_example_verbatim():
    assert np.allclose(
        make_attention_mask_from_positions(np.array([0, 1, 2, 0, 1], dtype=np.uint32)),
        np.array(
            [
                [True, False, False, False, False],
                [True, True, False, False, False],
                [True, True, True, False, False],
                [False, False, False, True, False],
                [False, False, False, True, True],
            ]
        ),
    )


def test_mask_matches_slow_reference_for_rows_and_batches():
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(6):
        lengths = rng.integers(1, 6, size=12)
        rows.append(np.concatenate([np.arange(n) for n in lengths])[:12].astype(np.uint32))
    batch = np.stack(rows)
    got = make_attention_mask_from_positions(batch)
    assert got.shape == (6, 12, 12) and got.dtype == np.bool_
    for r, pos in enumerate(rows):
        want = slow_mask(pos.tolist())
        assert got[r].tolist() == want
        assert make_attention_mask_from_positions(pos).tolist() == want


@pytest.fixture(scope="module")
def seed_result(tokenizer_path):
    from datasets import Dataset

    config = PrepareForTrainingTransformConfig(
        processing_strategy="pretrain",
        packing_strategy="dense",
        tokenizer_name=tokenizer_path,
        seq_len=1025,
        num_reduce_chunks=4,
    )
    transform = PrepareForTrainingTransform(config)
    rows = Dataset.from_dict({"content": [f"{t} {i}" for i in range(200) for t in TEXTS]})
    result = transform.run(rows)
    assert len(result) >= 8
    assert transform.stats["tokens_out"] == len(result) * 1025
    return result


@pytest.mark.parametrize("as_list", [False, True])
def test_lm_dataset_seed_asserts(seed_result, as_list):
    data = seed_result.to_list() if as_list else seed_result
    dataset = LMDataset(data)
    ex = dataset[0]
    row = seed_result[0]

    assert isinstance(ex["tokens"], torch.Tensor)
    assert ex["tokens"].shape[0] == 1024
    assert ex["labels"].shape[0] == 1024
    assert ex["attention_mask"].shape[1] == 1024
    assert ex["loss_mask"].shape[0] == 1024
    assert ex["position_ids"].shape[0] == 1024
    # The seed's token asserts, with values read from the prepared row instead of a fixed tokenizer's ids.
    assert ex["tokens"][0] == row["input_ids"][0]
    assert ex["tokens"][-1] == row["input_ids"][-2]
    assert ex["labels"][0] == row["input_ids"][1]
    assert ex["labels"][-1] == row["input_ids"][-1]
    assert ex["position_ids"][-1] == row["position_ids"][-2]
    assert ex["loss_mask"].tolist() == row["loss_mask"][1:]
    assert ex["attention_mask"].tolist() == slow_mask(row["position_ids"][:-1])


def test_dataloader_seed_asserts(seed_result):
    loader = DataLoader(
        LMDataset(seed_result),
        batch_size=8,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        pin_memory=False,
        collate_fn=collate_lm,
    )
    batch = next(iter(loader))
    assert batch["tokens"].shape == (8, 1024)
    assert batch["labels"].shape == (8, 1024)
    assert batch["position_ids"].shape == (8, 1024)
    assert batch["attention_mask"].ndim == 3 and batch["attention_mask"].shape[0] == 8
    assert len(list(loader)) == len(seed_result) // 8


def test_collate_lm_builds_batch_mask_when_items_have_none(seed_result):
    with_mask = LMDataset(seed_result)
    without = LMDataset(seed_result, attention_mask=False)
    assert "attention_mask" not in without[0]
    idx = [3, 0, 1]
    a = collate_lm([with_mask[i] for i in idx])
    b = collate_lm([without[i] for i in idx])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert b["attention_mask"].shape == (3, 1024, 1024) and b["attention_mask"].dtype == torch.bool


def test_collate_lm_on_rows_of_unequal_length_is_a_one_line_error():
    from hfprep.errors import DataError

    rows = [
        {"input_ids": np.arange(5, dtype=np.uint32), "position_ids": np.arange(5, dtype=np.uint32),
         "loss_mask": np.ones(5, bool)},
        {"input_ids": np.arange(3, dtype=np.uint32), "position_ids": np.arange(3, dtype=np.uint32),
         "loss_mask": np.ones(3, bool)},
    ]
    ds = LMDataset(rows)
    with pytest.raises(DataError, match=r"unequal length \[2, 4\]") as e:
        collate_lm([ds[0], ds[1]])
    assert "\n" not in str(e.value)
