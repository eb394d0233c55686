"""Bad input to the KD cache builder and readers: one clear error each, naming the file/row/key and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hfprep.errors import ConfigError, DataError, TokenizerError
from hfprep.kd.builder import build_kd_cache
from hfprep.kd.config import config_from_dict
from hfprep.kd.example import EXAMPLE_TEXTS, save_tiny_teacher, tiny_llama, write_prepared
from hfprep.kd.readers import RBTopKIterableDataset, load_kd_dataset
from hfprep.output.layout import atomic_output, write_split
from hfprep.tokenization.loading import train_tiny_tokenizer


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kd_errors")


@pytest.fixture(scope="module")
def prepared(work, tokenizer) -> Path:
    return write_prepared(tokenizer, work / "prepared", EXAMPLE_TEXTS * 2, seq_len=24, max_rows_per_shard=2)


@pytest.fixture(scope="module")
def teacher(work, tokenizer) -> str:
    return save_tiny_teacher(work / "teacher", len(tokenizer), seed=0)


@pytest.fixture(scope="module")
def cache(work, prepared, teacher, tokenizer_path) -> Path:
    build_kd_cache(cfg(prepared, work / "cache", teacher, tokenizer_path), progress=False)
    return work / "cache"


@pytest.fixture(scope="module")
def other_tokenizer(work):
    return train_tiny_tokenizer(
        ["completely different text, other merges " * 5] * 20, work / "other_tok", vocab_size=400
    )


def cfg(inp, out, teacher_path, tokenizer_path, **kw):
    return config_from_dict(
        {
            "input": {"folder": str(inp)},
            "teacher": {"name_or_path": str(teacher_path)},
            "tokenizer": {"name_or_path": str(tokenizer_path)},
            "output": {"folder": str(out), "rows_per_shard": 2},
            "k": 8,
            **kw,
        }
    )


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def test_teacher_vocab_smaller_than_student(work, prepared, tokenizer, tokenizer_path):
    small = save_tiny_teacher(work / "small_teacher", len(tokenizer) - 50)
    with pytest.raises(TokenizerError, match=r"logits width 350 but tokenizer .* has 400 ids"):
        build_kd_cache(cfg(prepared, work / "o1", small, tokenizer_path), progress=False)


def test_teacher_tokenizer_differs(work, prepared, tokenizer, tokenizer_path, other_tokenizer):
    path = save_tiny_teacher(work / "teacher_other_tok", len(tokenizer), tokenizer=other_tokenizer)
    with pytest.raises(TokenizerError, match="tokenizer differs"):
        build_kd_cache(cfg(prepared, work / "o2", path, tokenizer_path), progress=False)


def test_reader_refuses_other_k_and_tokenizer(cache, tokenizer, tokenizer_path, other_tokenizer):
    glob = str(cache / "data" / "train-*.parquet")
    with pytest.raises(DataError, match="cache has k=8 but k=32 was expected"):
        RBTopKIterableDataset(glob, student_tokenizer=tokenizer, k=32)
    with pytest.raises(TokenizerError, match="vocabulary of 400 ids, the student has 297"):
        RBTopKIterableDataset(glob, student_tokenizer=other_tokenizer)
    # same vocabulary size, different tokenizer (a normalizer added): caught by the fingerprint
    from tokenizers import normalizers

    from hfprep.tokenization.loading import load_tokenizer

    variant = load_tokenizer(tokenizer_path)
    variant.backend_tokenizer.normalizer = normalizers.Lowercase()
    assert len(variant) == len(tokenizer)
    with pytest.raises(TokenizerError, match="fingerprint .* differs from the student tokenizer"):
        RBTopKIterableDataset(glob, student_tokenizer=variant)
    with pytest.raises(TokenizerError, match="vocabulary of 400 ids, the student has 512"):
        RBTopKIterableDataset(glob, vocab_size=512)
    with pytest.raises(DataError, match="k=16"):
        load_kd_dataset(cache, k=16)


def test_reader_missing_column_and_missing_shard(work, cache):
    broken = copy_folder(cache, work / "broken_cache")
    first = sorted((broken / "data").glob("*.parquet"))[0]
    t = pq.read_table(first)
    pq.write_table(t.drop_columns(["topk_logprobs"]), first)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['topk_logprobs'\]"):
        RBTopKIterableDataset(str(broken / "data" / "*.parquet"))

    gap = copy_folder(cache, work / "gap_cache")
    files = sorted((gap / "data").glob("*.parquet"))
    assert len(files) >= 3
    files[1].unlink()
    with pytest.raises(DataError, match=r"1 of \d+ shards missing, e.g. .*train-00001-of-"):
        RBTopKIterableDataset(str(gap / "data" / "train-*.parquet"))
    with pytest.raises(DataError, match="no Parquet files found"):
        RBTopKIterableDataset(str(gap / "data" / "nothing-*.parquet"))


def test_input_not_prepared(work, teacher, tokenizer_path):
    plain = work / "plain"
    (plain / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": ["a", "b"]}), plain / "data" / "x.parquet")
    with pytest.raises(DataError, match="not a prepared hfprep dataset"):
        build_kd_cache(cfg(plain, work / "o3", teacher, tokenizer_path), progress=False)

    raw = work / "raw_rows"
    with atomic_output(raw, overwrite=True) as tmp:
        write_split(pa.table({"text": ["a", "b"]}), tmp, "train")
    with pytest.raises(DataError, match=r"missing column\(s\) \['input_ids', 'position_ids', 'loss_mask'\]"):
        build_kd_cache(cfg(raw, work / "o4", teacher, tokenizer_path), progress=False)

    bad_pos = work / "bad_positions"
    rows = {
        "input_ids": [[5, 6, 7], [8, 9]],
        "position_ids": [[0, 1, 2], [0, 2]],
        "loss_mask": [[True] * 3, [True] * 2],
    }
    schema = pa.schema(
        [
            ("input_ids", pa.list_(pa.uint32())),
            ("position_ids", pa.list_(pa.uint32())),
            ("loss_mask", pa.list_(pa.bool_())),
        ]
    )
    with atomic_output(bad_pos, overwrite=True) as tmp:
        write_split(pa.table(rows, schema=schema), tmp, "train")
    with pytest.raises(DataError, match=r"train-00000-of-00001\.parquet: row 1 has position_ids"):
        build_kd_cache(cfg(bad_pos, work / "o5", teacher, tokenizer_path), progress=False)

    big_ids = work / "big_ids"
    rows = {
        "input_ids": [[5, 6, 7], [8, 4000]],
        "position_ids": [[0, 1, 2], [0, 1]],
        "loss_mask": [[True] * 3, [True] * 2],
    }
    with atomic_output(big_ids, overwrite=True) as tmp:
        write_split(pa.table(rows, schema=schema), tmp, "train")
    with pytest.raises(DataError, match="row 1 has token id 4000 >= the tokenizer's vocabulary size 400"):
        build_kd_cache(cfg(big_ids, work / "o6", teacher, tokenizer_path), progress=False)


def test_input_shard_missing(work, prepared, teacher, tokenizer_path):
    gap = copy_folder(prepared, work / "gap_input")
    files = sorted((gap / "data").glob("*.parquet"))
    files[-1].unlink()
    with pytest.raises(DataError, match="shards missing"):
        build_kd_cache(cfg(gap, work / "o7", teacher, tokenizer_path), progress=False)


def test_nan_teacher(work, prepared, tokenizer, tokenizer_path):
    model = tiny_llama(len(tokenizer), seed=0)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    model.save_pretrained(str(work / "nan_teacher"))
    with pytest.raises(DataError, match=r"produced NaN/inf at row 0, token 0"):
        build_kd_cache(cfg(prepared, work / "o8", work / "nan_teacher", tokenizer_path), progress=False)
    assert not (work / "o8").exists()


def test_stale_partial_from_other_recipe(work, prepared, teacher, tokenizer_path):
    out = work / "o9"
    partial = work / ".o9.partial"
    (partial / "data").mkdir(parents=True, exist_ok=True)
    (partial / "kd_state.json").write_text('{"config_fingerprint": "other"}')
    with pytest.raises(ConfigError, match="partial cache from a different recipe"):
        build_kd_cache(cfg(prepared, out, teacher, tokenizer_path), progress=False)
    build_kd_cache(cfg(prepared, out, teacher, tokenizer_path), overwrite=True, progress=False)
    assert (out / "README.md").is_file() and not partial.exists()


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"<dict>: missing required key 'teacher'"):
        config_from_dict({"input": {"folder": "x"}, "tokenizer": {"name_or_path": "t"}, "output": {"folder": "o"}})
    with pytest.raises(ConfigError, match=r"invalid value for 'logprob_dtype'"):
        config_from_dict(
            {
                "input": {"folder": "x"},
                "teacher": {"name_or_path": "t"},
                "tokenizer": {"name_or_path": "t"},
                "output": {"folder": "o"},
                "logprob_dtype": "bfloat16",
            }
        )
