"""The seed's map-reduce examples (ChangeCaseTransform, CountCharsTransform) expressed on hfprep's framework."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Literal

import numpy as np
import pyarrow as pa
import pytest
from datasets import Dataset

from hfprep import (
    MapReduceTransformBase,
    MapReduceTransformConfigBase,
    MapTransformBase,
    MapTransformConfigBase,
)
from hfprep.engines.mapreduce import plan_reduce_ranges


class ChangeCaseTransformConfig(MapTransformConfigBase):
    type: Literal["change_case"] = "change_case"
    column: str
    to_lower: bool = False


class ChangeCaseTransform(MapTransformBase):
    """Changes the case of the value under ``column``."""

    class _MapFn:
        def __init__(self, config: ChangeCaseTransformConfig):
            self.config = config

        def __call__(self, row: dict) -> Iterator[dict]:
            value = row[self.config.column]
            yield {**row, self.config.column: value.lower() if self.config.to_lower else value.upper()}

    def __init__(self, config: ChangeCaseTransformConfig) -> None:
        super().__init__(self._MapFn(config), config)


class CountCharsTransformConfig(MapReduceTransformConfigBase):
    lowercase: bool = False
    column: str


class CountCharsTransform(MapReduceTransformBase):
    """Counts every character of ``column`` over the whole table: ``letter``, ``cnt`` rows."""

    class _MapFn:
        def __init__(self, config: CountCharsTransformConfig):
            self.config = config

        def __call__(self, row: dict) -> Iterator[tuple[str, dict]]:
            text = row[self.config.column]
            if self.config.lowercase:
                text = text.lower()
            for letter, cnt in Counter(text).items():
                yield letter, {"cnt": cnt}

    class _ReduceFn:
        def __init__(self, config: CountCharsTransformConfig):
            self.config = config

        def __call__(self, key: str, rows: Iterable[dict]) -> Iterator[dict]:
            yield {"letter": key, "cnt": sum(r["cnt"] for r in rows)}

    def __init__(self, config: CountCharsTransformConfig) -> None:
        super().__init__(self._MapFn(config), self._ReduceFn(config), config)


SEED_INPUT = [{"content": "A String"}, {"content": "abcc"}, {"content": "BCD"}]


def test_change_case_seed_assert():
    out = ChangeCaseTransform(ChangeCaseTransformConfig(column="content", to_lower=True)).run(SEED_INPUT)
    assert out == [{"content": "a string"}, {"content": "abcc"}, {"content": "bcd"}]


def test_count_chars_seed_assert():
    out = CountCharsTransform(CountCharsTransformConfig(column="content", lowercase=True)).run(SEED_INPUT)
    assert out == [
        {"letter": " ", "cnt": 1},
        {"letter": "a", "cnt": 2},
        {"letter": "b", "cnt": 2},
        {"letter": "c", "cnt": 3},
        {"letter": "d", "cnt": 1},
        {"letter": "g", "cnt": 1},
        {"letter": "i", "cnt": 1},
        {"letter": "n", "cnt": 1},
        {"letter": "r", "cnt": 1},
        {"letter": "s", "cnt": 1},
        {"letter": "t", "cnt": 1},
    ]


def test_dataset_in_dataset_out_and_num_proc_invariance():
    texts = [f"row {i} " + "xyz"[: i % 4] * (i % 7) for i in range(300)]
    ds = Dataset.from_dict({"content": texts})
    t = CountCharsTransform(CountCharsTransformConfig(column="content"))
    one = t.run(ds, num_proc=1)
    two = t.run(ds, num_proc=2)
    assert isinstance(one, Dataset)
    assert one.to_list() == two.to_list()
    expected = Counter("".join(texts))
    assert {r["letter"]: r["cnt"] for r in one} == dict(expected)
    assert [r["letter"] for r in one] == sorted(expected)


class GroupEchoConfig(MapReduceTransformConfigBase):
    num_keys: int


class GroupEcho(MapReduceTransformBase):
    """Emits, per key, the list of input values in the order the reducer saw them."""

    def __init__(self, config: GroupEchoConfig) -> None:
        def map_fn(row):
            yield row["v"] % config.num_keys, {"v": row["v"]}

        def reduce_fn(key, rows):
            yield {"key": key, "values": [r["v"] for r in rows]}

        super().__init__(map_fn, reduce_fn, config)


@pytest.mark.parametrize("num_proc", [1, 2])
def test_keys_ascending_and_input_order_within_group(num_proc):
    values = [(i * 7919) % 1000 for i in range(500)]  # a permutation-ish sequence
    t = GroupEcho(GroupEchoConfig(num_keys=13))
    t.reduce_memory_budget = 64  # force many reduce ranges
    out = t.run(Dataset.from_dict({"v": values}), num_proc=num_proc).to_list()
    assert [r["key"] for r in out] == sorted({v % 13 for v in values})
    for r in out:
        assert r["values"] == [v for v in values if v % 13 == r["key"]]


def test_empty_input():
    assert CountCharsTransform(CountCharsTransformConfig(column="content")).run([]) == []


def test_plan_reduce_ranges():
    import numpy as np

    assert plan_reduce_ranges(np.array([5, 5, 5, 5]), budget=10) == [(0, 2), (2, 4)]
    assert plan_reduce_ranges(np.array([50, 1, 1]), budget=10) == [(0, 1), (1, 3)]
    assert plan_reduce_ranges(np.array([1, 1, 1, 1]), budget=100, min_ranges=2) == [(0, 2), (2, 4)]
    assert plan_reduce_ranges(np.array([]), budget=10) == []
    # The case that stalled a 1M-document run: filling to the budget gave [2.0, 2.0, 0.5] GiB, so with two workers
    # (contiguous shares) one packed 4 GiB while the other packed 0.5. Now: 4 ranges of 1.125 GiB, 2 per worker.
    gib = 2**30
    assert plan_reduce_ranges(np.full(36, gib / 8), budget=2 * gib, min_ranges=2) == [(0, 9), (9, 18), (18, 27), (27, 36)]


@pytest.mark.parametrize("seed", range(20))
def test_plan_reduce_ranges_invariants(seed):
    """Random group sizes: the ranges tile 0..n in order, respect the budget (a bigger group alone), come in a
    multiple of the workers while groups allow, and no two ranges differ by more than the largest group."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 100, int(rng.integers(1, 80)))
    budget = int(rng.integers(100, 2000))
    workers = int(rng.integers(1, 5))
    ranges = plan_reduce_ranges(sizes, budget=budget, min_ranges=workers)
    assert [lo for lo, _ in ranges] == [0] + [hi for _, hi in ranges[:-1]] and ranges[-1][1] == len(sizes)
    totals = [int(sizes[lo:hi].sum()) for lo, hi in ranges]
    assert all(t <= budget or hi - lo == 1 for t, (lo, hi) in zip(totals, ranges))
    if len(ranges) < len(sizes):
        assert len(ranges) % workers == 0
        assert max(totals) - min(totals) <= 2 * sizes.max()
    # never more ranges than needed: the fewest whole multiple of the workers that fits the budget, plus rounding
    fewest = -(-int(sizes.sum()) // budget)
    assert len(ranges) >= min(len(sizes), fewest)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_gather_equals_arrow_take_on_chunked_sliced_tables(seed):
    """RowGather (the reduce side's numpy gather) against pyarrow's own take, row by row, on a table of many
    chunks, some of them slices of bigger arrays (their list offsets do not start at 0), in a random order."""
    from hfprep.engines.mapreduce import RowGather

    rng = np.random.default_rng(seed)
    chunks = []
    for _ in range(int(rng.integers(1, 7))):
        n = int(rng.integers(0, 40))
        lens = rng.integers(0, 9, n)
        ids = [rng.integers(0, 2**32, int(k), dtype=np.uint32).tolist() for k in lens]
        mask = [rng.random(int(k)) < 0.5 for k in lens]
        big = pa.table({
            "input_ids": pa.array([[0], *ids, [1]], pa.list_(pa.uint32())),
            "loss_mask": pa.array([[True], *(m.tolist() for m in mask), [False]], pa.list_(pa.bool_())),
            "__index__": pa.array(np.arange(n + 2) * 7, pa.int64()),
        })
        chunks.append(big.slice(1, n))  # a slice: offsets start past 0
    table = pa.concat_tables(chunks)
    assert RowGather.supports(table)
    rows = rng.permutation(table.num_rows)[: int(rng.integers(0, table.num_rows + 1))]
    gathered = RowGather(table, rows)
    expected = table.take(pa.array(rows, pa.int64())).to_pylist() if len(rows) else []
    assert gathered.table(0, len(rows)).to_pylist() == expected
    if len(rows) >= 2:
        cut = int(rng.integers(0, len(rows)))
        part = gathered.table(cut, len(rows))
        assert part.to_pylist() == expected[cut:]
        assert part.column("input_ids").chunk(0).offsets[0].as_py() == 0  # zero-offset arrays for the packers


def test_row_gather_reads_bool_values_that_start_mid_byte():
    """Masks whose value array is itself a slice (bit offset 1..7): the numpy unpacking RowGather uses agrees
    with pyarrow's own conversion, and a gather over such a list column equals Arrow's take."""
    from hfprep.engines.mapreduce import RowGather
    from hfprep.schema import values_to_numpy  # the one bool unpacking of RowGather and table_to_flat

    rng = np.random.default_rng(5)
    bits = pa.array(rng.random(203) < 0.5)
    for start in range(0, 12):
        for length in (0, 1, 7, 8, 9, 203 - start):
            part = bits.slice(start, length)
            assert values_to_numpy(part).tolist() == part.to_pylist()
    values = bits.slice(3)
    offsets = pa.array([0, 5, 5, 17, 40, 200], pa.int32())
    table = pa.table({"loss_mask": pa.ListArray.from_arrays(offsets, values)})
    rows = np.array([3, 0, 4, 2, 1])
    assert RowGather(table, rows).table(0, 5).to_pylist() == table.take(pa.array(rows)).to_pylist()


def test_row_gather_leaves_nulls_and_other_types_to_arrow():
    from hfprep.engines.mapreduce import RowGather

    assert not RowGather.supports(pa.table({"a": pa.array([[1], None], pa.list_(pa.int32()))}))
    assert not RowGather.supports(pa.table({"s": ["x", "y"]}))
    assert RowGather.supports(pa.table({"a": pa.array([[1], []], pa.list_(pa.int32())), "f": [0.5, 1.5]}))
