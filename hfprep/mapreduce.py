"""Map-reduce on ``datasets``: the seed's framework, datasets-native.

* **map**: a batched ``Dataset.map`` (``num_proc`` workers) that emits rows with a ``__key__`` column (and the
  input row index ``__index__``, so engines that do not keep order can restore it).
* **group**: one stable Arrow sort of the key column (a few bytes per row), then key boundaries.
* **reduce**: contiguous key ranges, sized by a memory budget, become the rows of a small *task* dataset; its
  batched ``map`` (``num_proc`` workers) gathers each range with one Arrow ``take`` and calls the reducer once per
  key with that key's rows in input order, keys ascending.

The cost of grouping is one pass over the data whatever the number of keys: the number of gathers depends on
bytes (``reduce_memory_budget``), not on keys.

Example (the seed's letter count):
    >>> class Cfg(MapReduceTransformConfigBase):
    ...     column: str
    >>> def map_fn(row):
    ...     for ch in row["content"]:
    ...         yield ch, {"cnt": 1}
    >>> def reduce_fn(key, rows):
    ...     yield {"letter": key, "cnt": sum(r["cnt"] for r in rows)}
    >>> MapReduceTransformBase(map_fn, reduce_fn, Cfg(column="content")).run([{"content": "aba"}])
    [{'letter': 'a', 'cnt': 2}, {'letter': 'b', 'cnt': 1}]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic

from .errors import ConfigError, DataError
from .types import Row

Key = TypeVar("Key")
KEY_COLUMN = "__key__"
INDEX_COLUMN = "__index__"
DEFAULT_REDUCE_MEMORY_BUDGET = 512 * 2**20


class TransformConfigBase(pydantic.BaseModel):
    """Base of every transform config: unknown keys are errors."""

    model_config = pydantic.ConfigDict(extra="forbid")


class MapTransformConfigBase(TransformConfigBase):
    """Config of a map-only transform."""


class MapReduceTransformConfigBase(TransformConfigBase):
    """Config of a map-reduce transform."""


def to_dataset(data: Any):
    """Accept a ``datasets.Dataset`` or an iterable of row dicts (the seed's input)."""
    from datasets import Dataset

    if isinstance(data, Dataset):
        return data
    rows = list(data)
    if not rows:
        return Dataset.from_dict({})
    if not all(isinstance(r, Mapping) for r in rows):
        bad = next(i for i, r in enumerate(rows) if not isinstance(r, Mapping))
        raise DataError(f"row {bad}: expected a dict, got {type(rows[bad]).__name__}")
    return Dataset.from_list([dict(r) for r in rows])


def rows_to_columns(rows: list[Row], columns: Iterable[str] | None = None) -> dict[str, list[Any]]:
    """Row dicts -> column dict (columns in first-seen order)."""
    names: dict[str, None] = dict.fromkeys(columns or [])
    for r in rows:
        names.update(dict.fromkeys(r))
    return {c: [r.get(c) for r in rows] for c in names}


class TransformBase:
    """A transform over a table. ``run`` takes a ``Dataset`` (or a list of dicts) and returns the same kind."""

    config: TransformConfigBase

    def run(self, data: Any, num_proc: int | None = None) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _wrap_output(data: Any, out):
        from datasets import Dataset

        return out if isinstance(data, Dataset) else out.to_list()


class MapTransformBase(TransformBase):
    """A map: ``map_fn(row)`` yields zero or more rows. Subclasses may override :meth:`map_batch` for speed."""

    def __init__(self, map_fn: Callable[[Row], Iterator[Row]], config: MapTransformConfigBase) -> None:
        self._map_fn = map_fn
        self.config = config

    def map_batch(self, batch: Mapping[str, list[Any]], indices: list[int]) -> dict[str, list[Any]] | pa.Table:
        n = len(indices)
        rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        return rows_to_columns([out for row in rows for out in self._map_fn(row)])

    def run(self, data: Any, num_proc: int | None = None, batch_size: int = 1000) -> Any:
        ds = to_dataset(data)
        if len(ds) == 0:
            return self._wrap_output(data, ds)
        out = ds.map(
            self.map_batch,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            remove_columns=ds.column_names,
            num_proc=num_proc,
            desc=f"map {type(self).__name__}",
        )
        return self._wrap_output(data, out)


def plan_reduce_ranges(group_bytes: np.ndarray, budget: int, min_ranges: int = 1) -> list[tuple[int, int]]:
    """Split groups ``0..n`` into contiguous ranges of at most ``budget`` bytes (a bigger group is alone).

    At least ``min_ranges`` ranges when there are that many groups, so every worker gets work.
    """
    n = len(group_bytes)
    if n == 0:
        return []
    budget = max(1, min(budget, int(np.ceil(group_bytes.sum() / max(1, min(min_ranges, n))))))
    ranges, lo, acc = [], 0, 0
    for g, b in enumerate(group_bytes.tolist()):
        if g > lo and acc + b > budget:
            ranges.append((lo, g))
            lo, acc = g, 0
        acc += b
    ranges.append((lo, n))
    return ranges


class _RangeReducer:
    """The reduce side's ``Dataset.map`` function: one task row = one contiguous key range."""

    def __init__(self, transform, table_source, order, bounds, keys, stats_dir: str) -> None:
        self.transform = transform
        self.table_source = table_source
        self.order = order
        self.bounds = bounds
        self.keys = keys
        self.stats_dir = stats_dir

    def __call__(self, batch: Mapping[str, list[int]]) -> pa.Table:
        table = self.table_source.data.table
        outs, stats = [], []
        for lo, hi in zip(batch["lo"], batch["hi"]):
            a, b = int(self.bounds[lo]), int(self.bounds[hi])
            sub = table.take(pa.array(self.order[a:b]))
            sub = sub.drop_columns([c for c in (KEY_COLUMN,) if c in sub.column_names])
            for g in range(lo, hi):
                part = sub.slice(int(self.bounds[g]) - a, int(self.bounds[g + 1] - self.bounds[g]))
                out, st = self.transform.reduce_group(self.keys[g], part)
                outs.append(out)
                if st is not None:
                    stats.append(st)
            if stats:
                path = Path(self.stats_dir) / f"range-{lo:09d}.json"
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(stats))
                os.replace(tmp, path)
                stats = []
        if not outs:
            return self.transform.empty_output()
        return pa.concat_tables([o for o in outs if o.num_rows] or outs[:1])


class MapReduceTransformBase(TransformBase):
    """A map-reduce: ``map_fn(row)`` yields ``(key, row)``; ``reduce_fn(key, rows)`` yields rows.

    Subclasses may override the batch hooks (:meth:`map_batch`, :meth:`reduce_group`, :meth:`output_features`)
    to work on Arrow tables instead of Python rows; :meth:`run` only moves data.
    """

    reduce_memory_budget: int = DEFAULT_REDUCE_MEMORY_BUDGET

    def __init__(
        self,
        map_fn: Callable[[Row], Iterator[tuple[Any, Row]]],
        reduce_fn: Callable[[Any, Iterable[Row]], Iterator[Row]],
        config: MapReduceTransformConfigBase,
    ) -> None:
        self._map_fn = map_fn
        self._reduce_fn = reduce_fn
        self.config = config
        self.last_stats: list[Any] = []

    # --- hooks -------------------------------------------------------------------------------------------

    def map_batch(self, batch: Mapping[str, list[Any]], indices: list[int]) -> dict[str, list[Any]] | pa.Table:
        """Map a batch; the result has ``__key__`` and ``__index__`` columns plus the row columns."""
        n = len(indices)
        keys, idx, rows = [], [], []
        for i in range(n):
            row = {k: v[i] for k, v in batch.items()}
            for key, out in self._map_fn(row):
                keys.append(key)
                idx.append(indices[i])
                rows.append(out)
        cols = rows_to_columns(rows)
        return {KEY_COLUMN: keys, INDEX_COLUMN: idx, **cols}

    def map_features(self):
        """Features of the map output, or None to let datasets infer them."""
        return None

    def reduce_group(self, key: Any, table: pa.Table) -> tuple[pa.Table, Any]:
        """Reduce one key's rows (input order, ``__index__`` column included); returns ``(table, stats)``."""
        rows = table.drop_columns([INDEX_COLUMN]).to_pylist()
        out = list(self._reduce_fn(key, rows))
        return pa.Table.from_pylist(out), None

    def output_features(self):
        """Features of the reduce output, or None to let datasets infer them."""
        return None

    def empty_output(self) -> pa.Table:
        feats = self.output_features()
        return feats.arrow_schema.empty_table() if feats is not None else pa.table({})

    def group_bytes(self, table: pa.Table, bounds: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Approximate in-memory bytes of each group (for planning reduce ranges)."""
        per_row = table.nbytes / max(1, table.num_rows)
        return np.diff(bounds).astype(np.float64) * per_row

    # --- engine -------------------------------------------------------------------------------------------

    def run(self, data: Any, num_proc: int | None = None, batch_size: int = 1000) -> Any:
        from datasets import Dataset

        ds = to_dataset(data)
        if len(ds) == 0:
            return self._wrap_output(data, Dataset(self.empty_output()))
        mapped = ds.map(
            self.map_batch,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            remove_columns=ds.column_names,
            num_proc=num_proc,
            features=self.map_features(),
            desc=f"map {type(self).__name__}",
        )
        out = self.reduce(mapped, num_proc=num_proc)
        return self._wrap_output(data, out)

    def reduce(self, mapped, num_proc: int | None = None):
        """Group ``mapped`` (output of the map side) by ``__key__`` and reduce each group."""
        from datasets import Dataset

        if mapped.num_rows == 0:
            self.last_stats = []
            return Dataset(self.empty_output())
        if mapped._indices is not None:
            mapped = mapped.flatten_indices()
        table = mapped.data.table
        key_col = table.column(KEY_COLUMN)
        order = pc.sort_indices(key_col).to_numpy()
        sorted_keys = key_col.take(pa.array(order)).combine_chunks()
        if sorted_keys.null_count:
            raise DataError("the map side produced a None key; keys must be comparable non-null values")
        change = np.flatnonzero(pc.not_equal(sorted_keys[1:], sorted_keys[:-1]).to_numpy(zero_copy_only=False)) + 1
        bounds = np.concatenate([[0], change, [len(order)]]).astype(np.int64)
        keys = sorted_keys.take(pa.array(bounds[:-1])).to_pylist()
        gbytes = self.group_bytes(table, bounds, order)
        self.check_group_bytes(gbytes, keys)
        ranges = plan_reduce_ranges(gbytes, self.reduce_memory_budget, min_ranges=max(1, num_proc or 1))
        tasks = Dataset.from_dict({"lo": [r[0] for r in ranges], "hi": [r[1] for r in ranges]})
        with tempfile.TemporaryDirectory(prefix="hfprep-stats-") as stats_dir:
            reducer = _RangeReducer(self, mapped, order, bounds, keys, stats_dir)
            out = tasks.map(
                reducer,
                batched=True,
                batch_size=1,
                remove_columns=tasks.column_names,
                num_proc=min(num_proc, len(ranges)) if num_proc else None,
                features=self.output_features(),
                load_from_cache_file=False,
                new_fingerprint=_reduce_fingerprint(mapped, self),
                desc=f"reduce {type(self).__name__}",
            )
            self.last_stats = [
                s for p in sorted(Path(stats_dir).glob("range-*.json")) for s in json.loads(p.read_text())
            ]
        return out

    def check_group_bytes(self, group_bytes: np.ndarray, keys: list[Any]) -> None:
        """Hook: refuse or warn about groups too large for memory (see :mod:`hfprep.prepare`)."""


def _reduce_fingerprint(mapped, transform) -> str:
    import hashlib

    cfg = transform.config.model_dump_json() if hasattr(transform.config, "model_dump_json") else repr(transform.config)
    h = hashlib.sha256(f"{mapped._fingerprint}|{type(transform).__qualname__}|{cfg}".encode())
    return h.hexdigest()[:32]


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
