"""prepare_streaming: same rows and stats as PrepareForTrainingTransform.run, from streams, in bounded memory."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from datasets import Dataset, IterableDataset

from hfprep.engines.mapreduce import MapReduceTransformBase, MapReduceTransformConfigBase
from hfprep.engines.streaming import iter_batches, prepare_streaming
from hfprep.errors import ConfigError, DataError
from hfprep.pack.packers import PACKERS
from hfprep.pack.transform import PrepareForTrainingTransform, PrepareForTrainingTransformConfig
from hfprep.tokenization.stage import TokenizeConfig, Tokenizer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "import", "numpy", "as", "np", "def", "f", "x", "return", "print", "café", "東京"]


def _docs(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))} for _ in range(n)]


def _transform(tokenizer_path: str, packing: str = "dense", **kw) -> PrepareForTrainingTransform:
    cfg = PrepareForTrainingTransformConfig(
        processing_strategy=kw.pop("strategy", "pretrain"),
        packing_strategy=packing,
        tokenizer_name=tokenizer_path,
        seq_len=kw.pop("seq_len", 32),
        num_reduce_chunks=kw.pop("num_reduce_chunks", 4),
        **kw,
    )
    return PrepareForTrainingTransform(cfg)


def _stream(rows: list[dict], shards: int = 3) -> IterableDataset:
    def gen(part: list[int]) -> Iterator[dict]:
        for p in part:
            yield from rows[p::shards]

    # Shards are read in order; shard p holds rows p, p + shards, ... so the row order is interleaved.
    return IterableDataset.from_generator(gen, gen_kwargs={"part": list(range(shards))})


def _reference(transform: PrepareForTrainingTransform, rows: list[dict], batch_size: int) -> tuple[list, dict]:
    out = transform.run(Dataset.from_list(rows), batch_size=batch_size)
    return out.to_list(), transform.stats


@pytest.mark.parametrize("packing", sorted(PACKERS))
def test_same_rows_and_stats_as_run(tokenizer_path, packing: str) -> None:
    rows = _docs(250)
    stream = _stream(rows, shards=3)
    stream_order = list(stream)  # the order the stream yields rows in
    expected, expected_stats = _reference(_transform(tokenizer_path, packing), stream_order, batch_size=40)
    t = _transform(tokenizer_path, packing)
    got = prepare_streaming(t, stream, batch_size=40, spill_buffer_bytes=4096)  # many spill files
    assert got.to_list() == expected
    assert t.stats == expected_stats
    assert t.rows_in == len(rows)
    assert got.features == t.output_features()
    assert got.cache_files  # on disk, memory-mapped


def test_spill_buffer_and_input_kind_do_not_change_rows(tokenizer_path, tmp_path: Path) -> None:
    rows = _docs(180, seed=1)
    results = []
    for data, buf in [
        (iter(rows), 1),  # plain iterator of dicts, one spill file per map batch
        (Dataset.from_list(rows), 2**30),  # everything buffered, one spill file
        (IterableDataset.from_generator(lambda: iter(rows)), 10_000),
    ]:
        t = _transform(tokenizer_path, "no_incomplete", num_reduce_chunks=5)
        spill = tmp_path / f"spill-{len(results)}"
        spill.mkdir()
        out = prepare_streaming(t, data, batch_size=33, spill_buffer_bytes=buf, spill_dir=spill, cache_dir=tmp_path)
        assert list(spill.iterdir()) == []  # spill files are removed
        assert Path(out.cache_files[0]["filename"]).parent == tmp_path
        results.append((out.to_list(), t.stats))
    assert results[0] == results[1] == results[2]
    # Tokens are conserved: every input token is written or counted as dropped.
    st = results[0][1]
    assert st["tokens_in"] == st["tokens_out"] + st["tokens_dropped"]
    assert st["rows_in"] == 180


def test_sft_conversations_from_a_stream(tokenizer_path) -> None:
    rng = random.Random(2)
    rows = [
        {
            "content": [
                {"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))},
                {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8)))},
            ]
        }
        for _ in range(60)
    ]
    expected, stats = _reference(_transform(tokenizer_path, "no_incomplete", strategy="sft", seq_len=64), rows, 16)
    t = _transform(tokenizer_path, "no_incomplete", strategy="sft", seq_len=64)
    got = prepare_streaming(t, IterableDataset.from_generator(lambda: iter(rows)), batch_size=16)
    assert got.to_list() == expected and t.stats == stats


def test_raw_fim_rows_match_run(tokenizer_path, tokenizer) -> None:
    rows = _docs(120, seed=3)
    fim = TokenizeConfig(strategy="pretrain", fim_rate=0.5, fim_seed=4)
    a = _transform(tokenizer_path, "dense")
    a.tokenizer_stage = Tokenizer(tokenizer, fim)
    expected = a.run(Dataset.from_list(rows), batch_size=25).to_list()
    b = _transform(tokenizer_path, "dense")
    b.tokenizer_stage = Tokenizer(tokenizer, fim)
    # Different batch size: FIM draws are per document, so rows cannot depend on batching.
    assert prepare_streaming(b, iter(rows), batch_size=7).to_list() == expected
    fim_prefix = tokenizer.convert_tokens_to_ids("<fim_prefix>")
    assert any(fim_prefix in r["input_ids"] for r in expected)


def test_empty_stream_and_everything_dropped(tokenizer_path) -> None:
    t = _transform(tokenizer_path, "dense")
    out = prepare_streaming(t, iter([]))
    assert out.num_rows == 0 and out.features == t.output_features() and t.rows_in == 0 and t.last_stats == []
    long_docs = [{"content": " ".join(["word"] * 50)}] * 3
    t = _transform(tokenizer_path, "no_incomplete", seq_len=8)
    out = prepare_streaming(t, iter(long_docs))
    assert out.num_rows == 0 and out.features == t.output_features()
    assert t.stats["docs_dropped"] == 3 and t.stats["rows_in"] == 3


def test_group_over_memory_budget_is_refused_before_packing(tokenizer_path) -> None:
    t = _transform(tokenizer_path, "dense", num_reduce_chunks=1, reduce_memory_budget=1000)
    with pytest.raises(ConfigError, match="raise num_reduce_chunks"):
        prepare_streaming(t, iter(_docs(100)))


def test_bad_rows_are_clear_errors(tokenizer_path) -> None:
    t = _transform(tokenizer_path, "dense")
    with pytest.raises(DataError, match="row 2: expected a dict"):
        prepare_streaming(t, iter([{"content": "a"}, {"content": "b"}, "oops"]))
    with pytest.raises(DataError, match="needs column 'content'"):
        prepare_streaming(t, iter([{"text": "a"}]))
    with pytest.raises(DataError, match="batch_size"):
        list(iter_batches(iter([{"a": 1}]), 0))


class _CountCfg(MapReduceTransformConfigBase):
    column: str = "content"


def test_generic_row_level_transform(tmp_path: Path) -> None:
    """The seed's letter count (row-level map/reduce functions) also streams."""

    def map_fn(row):
        for ch in row["content"]:
            yield ch, {"cnt": 1}

    def reduce_fn(key, rows):
        yield {"letter": key, "cnt": sum(r["cnt"] for r in rows)}

    texts = ["abracadabra", "banana", "", "zebra"] * 5
    t = MapReduceTransformBase(map_fn, reduce_fn, _CountCfg())
    out = prepare_streaming(t, ({"content": s} for s in texts), batch_size=3, cache_dir=tmp_path)
    counts = Counter("".join(texts))
    assert out.to_list() == [{"letter": k, "cnt": counts[k]} for k in sorted(counts)]
