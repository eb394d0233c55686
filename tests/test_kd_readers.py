"""KD cache readers: exact rank x worker sharding, zero-copy values equal to a plain read, dtypes, datasets path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_push import WRITE_TOKEN, hub, hub_in_process  # noqa: F401 - fixtures: the test Hub, this process pointed at it
from torch.utils.data import DataLoader

from hfprep.kd.builder import build_kd_cache
from hfprep.kd.config import config_from_dict
from hfprep.kd.example import EXAMPLE_TEXTS, save_tiny_teacher, write_prepared
from hfprep.kd.readers import FBDataset, RBTopKIterableDataset, load_kd_dataset


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tokenizer, tokenizer_path) -> Path:
    work = tmp_path_factory.mktemp("kd_readers")
    write_prepared(tokenizer, work / "prepared", EXAMPLE_TEXTS * 6, seq_len=24, packing="dense", max_rows_per_shard=7)
    save_tiny_teacher(work / "teacher", len(tokenizer), seed=5)
    cfg = config_from_dict(
        {
            "input": {"folder": str(work / "prepared")},
            "teacher": {"name_or_path": str(work / "teacher")},
            "tokenizer": {"name_or_path": tokenizer_path},
            "output": {"folder": str(work / "kd"), "rows_per_shard": 6, "row_group_rows": 2},
            "k": 4,
            "hidden_layers": [1],
        }
    )
    build_kd_cache(cfg, progress=False)
    return work / "kd"


def plain_rows(cache: Path) -> list[dict]:
    """Independent reference: every row, in file order, through Arrow's own to_pylist."""
    out = []
    for f in sorted((cache / "data").glob("*.parquet")):
        out.extend(pq.read_table(f).to_pylist())
    return out


def key(row: dict) -> tuple:
    return tuple(np.asarray(row["input_ids"]).tolist()) + tuple(np.asarray(row["topk_ids"]).reshape(-1).tolist())


def test_rows_equal_plain_read_and_dtypes(cache, tokenizer):
    ref = plain_rows(cache)
    ds = RBTopKIterableDataset(str(cache / "data" / "train-*.parquet"), student_tokenizer=tokenizer, k=4)
    got = list(ds)
    assert len(got) == len(ref) and len(ds.units) > 4
    for g, r in zip(got, ref):
        assert g["topk_ids"].dtype == torch.int64 and g["topk_logprobs"].dtype == torch.float16
        assert g["input_ids"].dtype == torch.int64 and g["attn_mask"].dtype == torch.uint8
        assert g["topk_ids"].tolist() == r["topk_ids"]
        np.testing.assert_array_equal(g["topk_logprobs"].numpy(), np.asarray(r["topk_logprobs"], np.float16))
        for c in ("input_ids", "attn_mask", "position_ids", "loss_mask", "target_mask"):
            assert g[c].tolist() == r[c], c


def test_fbdataset_reads_hidden_layer(cache):
    ref = plain_rows(cache)
    got = list(FBDataset(str(cache / "data" / "train-*.parquet"), teacher_layer=1))
    assert set(got[0]) >= {"input_ids", "attn_mask", "hidden_L1"}
    np.testing.assert_array_equal(got[3]["hidden_L1"].numpy(), np.asarray(ref[3]["hidden_L1"], np.float16))


@pytest.mark.parametrize("world_size", [1, 2])
def test_sharding_over_ranks_and_workers_is_exact(cache, world_size):
    ref = [key(r) for r in plain_rows(cache)]
    seen = []
    for rank in range(world_size):
        ds = RBTopKIterableDataset(str(cache / "data" / "train-*.parquet"), rank=rank, world_size=world_size)
        loader = DataLoader(ds, batch_size=None, num_workers=2)
        seen.extend(key(r) for r in loader)
    assert len(seen) == len(ref)  # nothing read twice ...
    assert sorted(seen) == sorted(ref)  # ... and nothing skipped


def test_units_split_disjointly(cache):
    glob = str(cache / "data" / "train-*.parquet")
    full = RBTopKIterableDataset(glob).units
    parts = [RBTopKIterableDataset(glob, rank=r, world_size=3).my_units() for r in range(3)]
    assert sorted(u for p in parts for u in p) == sorted(full)
    assert all(len(p) >= 1 for p in parts)


def test_load_kd_dataset_torch_format(cache, tokenizer):
    ref = plain_rows(cache)
    ds = load_kd_dataset(cache, student_tokenizer=tokenizer, k=4)
    row = ds[2]
    assert tuple(row["topk_ids"].shape) == (len(ref[2]["input_ids"]), 4)
    assert row["topk_ids"].tolist() == ref[2]["topk_ids"]
    assert row["topk_logprobs"].dtype == torch.float32  # datasets' torch format upcasts float16
    np.testing.assert_array_equal(row["topk_logprobs"].numpy(), np.asarray(ref[2]["topk_logprobs"], np.float32))


def write_seed_cache(path: Path, ragged: bool = False) -> list[dict]:
    """A cache as the seed's KD script writes it: list<list<int64/double>>, no hfprep metadata."""
    import pyarrow as pa

    rows = [
        {"input_ids": [5, 6, 7], "attn_mask": [1, 1, 1],
         "topk_ids": [[1, 2], [3, 4], [5, 6]], "topk_logprobs": [[-0.25, -1.5], [-0.5, -2.0], [-0.125, -3.0]]},
        {"input_ids": [8, 9], "attn_mask": [1, 1],
         "topk_ids": [[7, 8], [9, 10]], "topk_logprobs": [[-0.75, -1.0], [-1.25, -4.0]]},
    ]
    if ragged:
        rows[1]["topk_ids"][1] = [9]
    table = pa.Table.from_pylist(rows)
    assert table.schema.field("topk_logprobs").type == pa.list_(pa.list_(pa.float64()))
    pq.write_table(table, path)
    return rows


def test_a_seed_style_cache_is_read_with_a_one_line_note(tmp_path):
    rows = write_seed_cache(tmp_path / "seed.parquet")
    with pytest.warns(UserWarning, match="seed-style KD cache") as rec:
        ds = RBTopKIterableDataset(str(tmp_path / "seed.parquet"), k=2)
    assert all("\n" not in str(w.message) for w in rec)
    got = list(ds)
    assert len(got) == 2
    for g, r in zip(got, rows, strict=True):
        assert g["input_ids"].tolist() == r["input_ids"]
        assert g["topk_ids"].tolist() == r["topk_ids"]
        assert g["topk_logprobs"].tolist() == r["topk_logprobs"]  # exact in float32 (the seed reader's dtype)
        assert g["topk_logprobs"].dtype == torch.float32


def test_a_seed_style_cache_with_ragged_topk_or_another_k_is_refused_in_one_line(tmp_path):
    from hfprep.errors import DataError

    write_seed_cache(tmp_path / "ragged.parquet", ragged=True)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="different numbers of top-k entries") as e:
        list(RBTopKIterableDataset(str(tmp_path / "ragged.parquet")))
    assert "\n" not in str(e.value)
    write_seed_cache(tmp_path / "k2.parquet")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="k=3 was expected"):
        list(RBTopKIterableDataset(str(tmp_path / "k2.parquet"), k=3))


@pytest.fixture
def local_hub(hub_in_process):  # noqa: F811 - test_push's fixture: the test Hub, this process pointed at it
    return hub_in_process


RUN_SNIPPET = """
import json, sys
import numpy as np
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])
exec(sys.argv[1])
print("RESULT " + json.dumps({k: np.asarray(v).tolist() for k, v in next(iter(ds)).items()}))
"""


@pytest.mark.parametrize("config_name", ["default", "teacher-b"])
def test_a_pushed_cache_card_reads_from_the_repo_not_the_folder(cache, tokenizer, tokenizer_path, local_hub,
                                                                 config_name, tmp_path):
    """The pushed card's *Use* snippets name the repo (and config) and run against it (a fresh process pointed at
    the test Hub, as a user would): no folder name left."""
    import json
    import os
    import re
    import subprocess
    import sys

    from hfprep.output.hub import push_folder

    push_folder(cache, "user/kd", token=WRITE_TOKEN, config_name=config_name)
    card = local_hub.repo_files("user/kd")["README.md"].decode()
    assert str(cache) not in card and f'"{cache.name}/' not in card and f'"{cache.name}"' not in card
    use = re.search(r"<!-- hfprep:snippet kd -->\n(.*?)<!-- hfprep:snippet-end kd -->", card, re.S)[1]
    config = ', "teacher-b"' if config_name != "default" else ""
    assert f'load_dataset("user/kd"{config}, split="train")' in use
    code = re.search(r"```python\n(.*?)```", use, re.S)[1]
    env = local_hub.client_env(dict(os.environ), WRITE_TOKEN, str(tmp_path / "hf_home"))
    proc = subprocess.run([sys.executable, "-c", RUN_SNIPPET, code, tokenizer_path], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    want = next(iter(RBTopKIterableDataset(str(cache / "data" / "train-*.parquet"), student_tokenizer=tokenizer)))
    assert got == {k: np.asarray(v).tolist() for k, v in want.items()}
