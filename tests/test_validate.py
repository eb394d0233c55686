"""validate: hand-worked padding/stat cases, and every kind of corruption of a real prepared folder is reported."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hfprep.output.layout import write_parquet
from hfprep.output.validate import batch_stats, validate_folder
from hfprep.run import run_recipe
from hfprep.schema import flat_to_table, padding_mask
from hfprep.tokenization.stage import tokenized_features

SHARD = "data/train-00000-of-00001.parquet"


def table_from_rows(rows: list[tuple[list[int], list[int], list[bool]]]) -> pa.Table:
    lens = [len(r[0]) for r in rows]
    off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    cat = [np.concatenate([np.asarray(r[i]) for r in rows]) if rows else np.zeros(0) for i in range(3)]
    return flat_to_table(cat[0], cat[1], cat[2].astype(bool), off)


@pytest.mark.parametrize(
    ("ids", "pos", "loss", "expected"),
    [
        ([5, 6, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]),  # trailing padding
        ([0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]),  # nothing but padding (validate reports such a row)
        ([0, 7, 8], [0, 0, 1], [1, 1, 1], [0, 0, 0]),  # a cut document's eos opening the row is data
        ([5, 0, 6, 0], [0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]),  # eos inside a document (position > 0) is data
        ([5, 0, 6, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]),  # only the trailing run counts
        ([5, 6, 0, 0], [0, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]),  # a lone eos (= pad id) with loss is data
        ([5, 6, 9, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]),  # another id with no loss is data
    ],
)
def test_padding_mask_hand_cases(ids, pos, loss, expected):
    got = padding_mask(np.array(ids), np.array(pos), np.array(loss, bool), np.array([0, len(ids)]), 0)
    assert got.astype(int).tolist() == expected


def test_batch_stats_match_a_plain_python_count():
    rng = random.Random(0)
    rows = []
    for _ in range(50):
        L = 12
        ids, pos, mask = [], [], []
        while len(ids) < L:
            n = min(rng.randint(1, 6), L - len(ids))
            if rng.random() < 0.2 and ids:  # pad the rest
                k = L - len(ids)
                ids += [0] * k
                pos += [0] * k
                mask += [False] * k
                break
            ids += [rng.randint(1, 50) for _ in range(n)]
            pos += list(range(n))
            mask += [rng.random() < 0.7 for _ in range(n)]
        rows.append((ids, pos, mask))
    stats, fill, seg = batch_stats(table_from_rows(rows), 0, padded=True)
    pad = segs = loss = 0
    seg_lens = []
    for ids, pos, mask in rows:
        i = len(ids) - 1
        while i > 0 and ids[i] == 0 and pos[i] == 0:
            i -= 1
        real = i + 1
        pad += len(ids) - real
        loss += sum(mask)
        starts = [j for j in range(real) if pos[j] == 0]
        segs += len(starts)
        seg_lens += [b - a for a, b in zip(starts, [*starts[1:], real])]
    assert (stats.rows, stats.pad_tokens, stats.loss_tokens, stats.segments) == (50, pad, loss, segs)
    assert stats.tokens == 50 * 12 - pad
    assert sorted(seg.tolist()) == sorted(seg_lens)
    assert np.isclose(fill.sum() * 12, stats.tokens)


def write_project(root: Path, tokenizer_path: str, seed: int, max_words: int, packing: dict) -> None:
    """40 random documents of 1..``max_words`` words in ``root/docs.jsonl`` and a recipe ``root/r.yaml`` -> ``out``."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "import", "def", "fox"]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, max_words))) for _ in range(40)]
    (root / "docs.jsonl").write_text("".join(json.dumps({"content": d}) + "\n" for d in docs))
    (root / "r.yaml").write_text(yaml.safe_dump({
        "source": {"files": ["docs.jsonl"]},
        "tokenizer": {"name_or_path": tokenizer_path},
        "packing": packing,
        "output": {"folder": "out"},
    }))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer_path) -> Path:
    root = tmp_path_factory.mktemp("validate")
    write_project(root, tokenizer_path, seed=1, max_words=12,
                  packing={"seq_len": 24, "strategy": "no_incomplete", "num_reduce_chunks": 2})
    run_recipe(root / "r.yaml")
    return root / "out"


@pytest.fixture()
def copy(prepared, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(prepared, dst)
    return dst


def rewrite(folder: Path, edit) -> None:
    table = pq.read_table(folder / SHARD)
    rows = table.to_pylist()
    edit(rows)
    write_parquet(pa.Table.from_pylist(rows, schema=tokenized_features().arrow_schema), folder / SHARD,
                  tokenized_features())


def test_prepared_folder_is_valid(prepared):
    report = validate_folder(prepared)
    assert report.ok, report.violations
    assert report.stats["train"]["pad_tokens"] > 0  # the fixture exercises padding


def test_broken_positions(copy):
    def edit(rows):
        rows[0]["position_ids"][2] = 7

    rewrite(copy, edit)
    v = validate_folder(copy).violations
    assert any(f"{SHARD} row 0, token 2: position 7 after" in x for x in v), v


def test_row_not_starting_at_zero_and_wrong_length(copy):
    def edit(rows):
        rows[1]["position_ids"][0] = 3
        rows[2] = {k: v[:-1] for k, v in rows[2].items()}

    rewrite(copy, edit)
    v = validate_folder(copy).violations
    assert any("row 1: position_ids start at 3, not 0" in x for x in v), v
    assert any("row 2: length 23 != seq_len 24" in x for x in v), v


def test_loss_on_a_pad_token_makes_it_data_and_the_card_disagrees(copy):
    def edit(rows):
        for r in rows:
            if r["input_ids"][-1] == 0 and r["position_ids"][-1] == 0:
                r["loss_mask"][-1] = True
                return
        raise AssertionError("no padded row")

    rewrite(copy, edit)
    v = validate_folder(copy).violations
    for key in ("tokens", "pad_tokens", "loss_tokens"):
        assert any(f"{key} =" in x and "in the card" in x for x in v), v


def test_a_row_of_nothing_but_padding(copy):
    def edit(rows):
        rows[0]["input_ids"] = [0] * 24
        rows[0]["position_ids"] = [0] * 24
        rows[0]["loss_mask"] = [False] * 24

    rewrite(copy, edit)
    v = validate_folder(copy).violations
    assert any("row 0: the row is all padding" in x for x in v), v


def test_mismatched_list_lengths(copy):
    def edit(rows):
        rows[0]["loss_mask"] = rows[0]["loss_mask"][:-2]

    rewrite(copy, edit)
    v = validate_folder(copy).violations
    assert any("row 0: input_ids/position_ids/loss_mask lengths differ (24/24/22)" in x for x in v), v


def test_wrong_dtype(copy):
    t = pq.read_table(copy / SHARD)
    t = t.set_column(0, "input_ids", t.column("input_ids").cast(pa.list_(pa.int64())))
    pq.write_table(t.replace_schema_metadata(None), copy / SHARD)
    v = validate_folder(copy).violations
    assert any("column 'input_ids' has type list<element: int64>" in x for x in v), v
    assert any("no datasets feature metadata" in x for x in v), v


def test_card_stats_and_missing_shard(copy):
    card = (copy / "README.md").read_text()
    assert "train: {rows: " in card  # per-split stats are one flow mapping each
    (copy / "README.md").write_text(card.replace("train: {rows: ", "train: {rows: 1", 1))
    (copy / SHARD).rename(copy / "data/train-00000-of-00002.parquet")
    v = validate_folder(copy).violations
    assert any("split 'train': missing shard file(s) data/train-00001-of-00002.parquet" in x for x in v), v
    assert any("split 'train' rows = 1" in x and "in the card" in x for x in v), v


def test_not_a_dataset(tmp_path):
    v = validate_folder(tmp_path).violations
    assert "README.md: missing (no dataset card)" in v
    assert "data/: no Parquet shards" in v


@pytest.mark.parametrize("packing", [{"strategy": "bfd", "packing_kwargs": {"pad": False}},
                                     {"strategy": "bfd", "packing_kwargs": {"overflow": "split"}}])
def test_bfd_runs_validate_and_every_report_counts_the_same(tmp_path, tokenizer_path, packing):
    from hfprep.output.inspect_cmd import inspect_folder

    write_project(tmp_path, tokenizer_path, seed=2, max_words=30,
                  packing={"seq_len": 16, "num_reduce_chunks": 2, **packing})
    summary = run_recipe(tmp_path / "r.yaml")
    report = validate_folder(tmp_path / "out")
    assert report.ok, report.violations
    s, v = summary["splits"]["train"], report.stats["train"]
    assert (s["tokens_out"], s["pad_tokens"], s["loss_tokens"]) == (v["tokens"], v["pad_tokens"], v["loss_tokens"])
    assert (s["quality"]["tokens"], s["quality"]["pad_tokens"]) == (v["tokens"], v["pad_tokens"])
    assert s["tokens_out"] + s["tokens_dropped"] == s["tokens_in"]
    table = pq.read_table(tmp_path / "out" / SHARD)
    if packing["packing_kwargs"].get("pad", True):
        assert v["pad_tokens"] == len(table) * 16 - v["tokens"]
    else:
        assert v["pad_tokens"] == 0 and v["tokens"] == sum(len(x) for x in table.column("input_ids").to_pylist())
    shown = sum(int(inspect_folder(tmp_path / "out", row=i)["text"].split(" padding token")[0].split()[-1])
                for i in range(len(table)))
    assert shown == v["pad_tokens"]
