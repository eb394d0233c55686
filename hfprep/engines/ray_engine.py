"""The Ray engine: the same map-reduce as :mod:`hfprep.engines.mapreduce`, spread over a Ray cluster with Ray
tasks and its object store.

The engine only moves data; the work is the transform's own functions, so the rows are the same as the datasets
engine's, in the same order:

* **read + map** (one Ray task per Parquet row group / JSONL file): each batch of ``MAP_BATCH_ROWS`` input rows
  goes through ``transform.map_batch(batch, indices)`` with the *global* input row numbers as ``indices``. The task
  leaves its rows in the object store (one Arrow IPC buffer) and returns a small summary to the driver: the input
  rows it read, and each key's rows and bytes (``transform.group_bytes``).
* **plan** (driver): the keys of all summaries, sorted, with their sizes: ``check_group_bytes`` refuses a group
  over ``reduce_memory_budget`` before any reduce starts (the datasets engine's check and message), and
  :func:`~hfprep.engines.mapreduce.plan_reduce_ranges` cuts contiguous key ranges of equal size,
  ``RANGES_PER_WORKER`` per worker CPU.
* **reduce** (one task per range): the range's rows from every map output, in input order, gathered key by key
  (:func:`~hfprep.engines.mapreduce.range_groups`) and packed with ``transform.reduce_group_with_tail``, the
  datasets engine's reduce. On one node the tasks read the map outputs in place (shared memory); on several, a
  split task per map output first cuts it by range where it lives, so each row crosses the network once.
* **collect** (driver): the ranges' packed rows stream, in key order, into one Arrow file in a cache folder, then
  the groups' leftovers (dense packing's incomplete tails) are packed together with ``transform.reduce_tails``,
  as on the datasets engine; the file comes back as a memory-mapped ``datasets.Dataset``.

Input order: Parquet files are numbered in the order given, then by row group and row, exactly like
``load_dataset("parquet", data_files=[...])``. JSONL files have no row count in a footer, so their documents are
numbered ``file_number * 2**40 + line`` (the same order; only the numbers in error messages differ).

Example:
    >>> from hfprep.pack.transform import PrepareForTrainingTransformConfig
    >>> cfg = PrepareForTrainingTransformConfig(processing_strategy="pretrain", packing_strategy="dense",
    ...     tokenizer_name="path/to/tokenizer", seq_len=2048, num_reduce_chunks=64)  # doctest: +SKIP
    >>> ds, stats = prepare_with_ray(cfg, ["data/part-0.parquet", "data/part-1.parquet"])  # doctest: +SKIP
    >>> stats["tokens_out"], ds.features["input_ids"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq
from datasets import Dataset, DatasetInfo

from .. import scratch
from ..datasets_internals import arrow_table
from ..errors import ConfigError, DataError, HfprepError, warn_once
from ..source.loading import locate_json_error
from ..tokenization.backends import sample_rows, sample_texts
from .mapreduce import (
    BYTES_PER_TOKEN_IN_GROUP,
    KEY_COLUMN,
    MapReduceTransformBase,
    MapReduceTransformConfigBase,
    RowGather,
    _temporary_cache_dir,
    gather_rows,
    key_groups,
    map_in_batches,
    parquet_sample_texts,
    plan_reduce_ranges,
    range_groups,
)

RAY_INSTALL_HINT = "pip install 'hfprep[ray]'"
TESTED_RAY_VERSIONS = ">=2.50,<2.61"
"""Ray versions the engine is tested with (the ``ray`` extra pins the same range)."""

MAP_BATCH_ROWS = 1000
"""Input rows per ``map_batch`` call (the datasets engine's default ``batch_size``)."""

TEXT_BYTES_PER_TOKEN = 3.0
"""Conservative text bytes per token for the pre-flight group-size estimate (byte-level BPE averages ~3.5-4.5)."""

JSON_FILE_STRIDE = 2**40
"""Document numbers of JSONL file ``i`` start at ``i * JSON_FILE_STRIDE`` (no row counts are known up front)."""

RANGES_PER_WORKER = 4
"""Reduce ranges per worker CPU (at least): the driver writes one range's rows while the workers pack the next, so
smaller ranges keep both busy, leave a short write after the last one, and hold less in the object store."""

JSON_SAMPLE_BYTES = 1 << 20  # read from each sampled JSON Lines file for the backend guard

_PARQUET_SUFFIXES = (".parquet", ".pq")
_JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst", ".ndjson")

_transform_cache: dict[str, Any] = {}


def import_ray():
    """Import Ray (an optional extra) or fail with the install command.

    Example:
        >>> ray = import_ray()  # doctest: +SKIP
    """
    try:
        # Ray is an optional extra (hfprep[ray]): imported only by the ray engine, with the install hint if missing.
        import ray
    except ImportError as e:
        raise ConfigError(f"the 'ray' engine needs Ray, which is not installed; run: {RAY_INSTALL_HINT}") from e
    return ray


def recommended_num_reduce_chunks(total_tokens: int, reduce_memory_budget: int) -> int:
    """The smallest ``num_reduce_chunks`` that keeps every group well under ``reduce_memory_budget``.

    A group holds ~``BYTES_PER_TOKEN_IN_GROUP`` (9) bytes per token while it is packed, and keys spread documents
    evenly, so the rule is ``ceil(2 * 9 * total_tokens / budget)``: the factor 2 leaves room for hash imbalance
    and long documents. It is the same number the budget error of the datasets engine suggests.

    Example:
        >>> recommended_num_reduce_chunks(10**9, 512 * 2**20)  # 1B tokens, 512 MiB groups
        34
    """
    return max(1, math.ceil(2 * BYTES_PER_TOKEN_IN_GROUP * total_tokens / reduce_memory_budget))


# --- sources ---------------------------------------------------------------------------------------------------


def _format_of(files: Sequence[str], fmt: str | None) -> str:
    if fmt is not None:
        f = fmt.lower()
        if f == "parquet":
            return "parquet"
        if f in ("json", "jsonl", "ndjson"):
            return "json"
        raise ConfigError(f"source format {fmt!r} is not supported by the 'ray' engine; use 'parquet' or 'json'")
    kinds = set()
    for path in files:
        name = path.lower()
        if name.endswith(_PARQUET_SUFFIXES):
            kinds.add("parquet")
        elif name.endswith(_JSON_SUFFIXES):
            kinds.add("json")
        else:
            raise ConfigError(f"cannot tell the format of {path!r}; pass format='parquet' or format='json'")
    if len(kinds) > 1:
        raise ConfigError(f"the source mixes Parquet and JSON files ({files[0]!r}, ...); use one format per run")
    return kinds.pop()


def _expand(path: str) -> list[str]:
    if "://" in path or not os.path.isdir(path):
        return [path]
    found = sorted(str(p) for p in Path(path).rglob("*") if p.name.lower().endswith(_PARQUET_SUFFIXES + _JSON_SUFFIXES))
    if not found:
        raise ConfigError(f"folder {path!r} holds no .parquet or .jsonl files")
    return found


def dataset_to_parquet(dataset, folder: str | os.PathLike, num_files_hint: int = 4) -> str:
    """Write a ``datasets.Dataset`` as one Parquet file with ~``num_files_hint`` row groups (one read task each)."""
    table = arrow_table(dataset)
    path = Path(folder) / "source.parquet"
    rows_per_group = max(1, min(100_000, math.ceil(table.num_rows / max(1, num_files_hint))))
    pq.write_table(table, str(path), row_group_size=rows_per_group)
    return str(path)


def resolve_source(source: Any, fmt: str | None = None, scratch: str | None = None) -> tuple[list[str], str]:
    """``(files, format)`` of a source: paths (local, ``hf://``, folders), a spec with ``files``/``format``
    attributes, or a ``datasets.Dataset`` (written to Parquet under ``scratch`` first).

    Example:
        >>> resolve_source(["a.parquet", "b.parquet"])
        (['a.parquet', 'b.parquet'], 'parquet')
    """
    if isinstance(source, Dataset):
        if scratch is None:
            raise ConfigError("a datasets.Dataset source needs a scratch folder to be written to Parquet")
        hint = 4
        ray = import_ray()
        if ray.is_initialized():
            hint = 4 * max(1, int(ray.cluster_resources().get("CPU", 1)))
        return [dataset_to_parquet(source, scratch, hint)], "parquet"
    for attr in ("files", "data_files", "paths"):
        if hasattr(source, attr) and not isinstance(source, str | os.PathLike):
            fmt = fmt or getattr(source, "format", None)
            source = getattr(source, attr)
            break
    if isinstance(source, str | os.PathLike):
        source = [source]
    try:
        files = [f for p in source for f in _expand(os.fspath(p))]
    except TypeError as e:
        raise ConfigError(
            f"the 'ray' engine reads files: pass a list of Parquet/JSONL paths, got {type(source).__name__}"
        ) from e
    if not files:
        raise ConfigError("the 'ray' engine got an empty list of input files")
    return files, _format_of(files, fmt)


def _open(path: str):
    """A binary file object for a local path or any fsspec URL (``hf://``, ``s3://`` ...)."""
    if "://" not in path:
        return open(path, "rb")
    fs, inner = fsspec.core.url_to_fs(path)
    return fs.open(inner, "rb")


def _parquet_file(path: str):
    if "://" not in path:
        return pq.ParquetFile(path, memory_map=True)
    return pq.ParquetFile(_open(path))


def plan_reads(files: Sequence[str], fmt: str) -> tuple[list[dict[str, Any]], int, list[str] | None]:
    """One read item per Parquet row group (from the footers only) or per JSONL file.

    Returns ``(items, estimated input bytes, column names of the first Parquet file or None)``.
    """
    items: list[dict[str, Any]] = []
    start, nbytes, columns = 0, 0, None
    for i, path in enumerate(files):
        if fmt == "parquet":
            try:
                pf = _parquet_file(path)
            except (OSError, ValueError) as e:
                raise DataError(f"cannot read Parquet file {path!r}: {e}") from e
            md = pf.metadata
            if columns is None:
                columns = list(pf.schema_arrow.names)
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                items.append({"path": path, "format": fmt, "row_group": g, "start": start, "rows": rg.num_rows})
                start += rg.num_rows
                nbytes += rg.total_byte_size
        else:
            items.append({"path": path, "format": fmt, "row_group": -1, "start": i * JSON_FILE_STRIDE})
            try:
                nbytes += os.path.getsize(path) if "://" not in path else int(_fs_size(path))
            except OSError as e:
                raise DataError(f"cannot read JSON file {path!r}: {e}") from e
    return items, nbytes, columns


def _fs_size(path: str) -> int:
    fs, inner = fsspec.core.url_to_fs(path)
    return fs.size(inner)


def read_item(item: dict[str, Any]) -> pa.Table:
    """Read one planned item (a Parquet row group or a whole JSONL file) on a worker."""
    if item["format"] == "parquet":
        return _parquet_file(item["path"]).read_row_group(int(item["row_group"]))

    with _open(item["path"]) as f:
        try:
            return pj.read_json(f)
        except pa.ArrowInvalid as e:
            located = locate_json_error(item["path"])  # the file and line, as the datasets engine says it
            raise DataError(located[1] if located else f"{item['path']}: not valid JSON Lines ({e})") from e


def sample_read_items(
    items: Sequence[dict[str, Any]], columns: Sequence[str], max_items: int = 8, max_rows: int = 256
) -> list[str]:
    """Texts for the backend guard, read in the driver before any task starts. Parquet: what the datasets engine
    samples from the same files (:func:`~hfprep.engines.mapreduce.parquet_sample_texts`: the first rows of up to 8
    evenly spaced row groups).
    JSON Lines (no row count up front): the lines in the first MiB of up to ``max_items`` evenly spaced files
    (lines that do not parse are left to the workers, which report them).

    Example:
        >>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "a.parquet")
        >>> pq.write_table(pa.table({"text": ["a", "b", "c"]}), path, row_group_size=2)
        >>> items, _, _ = plan_reads([path], "parquet")
        >>> sample_read_items(items, ["text"])
        ['a', 'b', 'c']
    """
    if not items or not columns:
        return []
    if items[0]["format"] == "parquet":
        groups = [(i["path"], int(i["row_group"]), int(i["start"]), int(i["rows"])) for i in items]
        return parquet_sample_texts(groups, columns, max_rows=max_rows)
    parts: dict[str, list[Any]] = {c: [] for c in columns}
    for i in sample_rows(len(items), max_items):
        try:
            with fsspec.open(items[i]["path"], "rb", compression="infer") as f:
                head = f.read(JSON_SAMPLE_BYTES)
        except (OSError, ValueError, ImportError):  # unreadable here (e.g. no zstd codec): the workers say why
            continue
        lines = head.split(b"\n")
        for line in lines[:-1] if len(head) == JSON_SAMPLE_BYTES else lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and all(c in row for c in columns):
                for c in columns:
                    parts[c].append(row[c])
    return sample_texts(parts, columns, max_rows=max_rows)


# --- worker side -----------------------------------------------------------------------------------------------


def _get_transform(holder: list) -> MapReduceTransformBase:
    """The transform, deserialized once per worker process (a Ray object ref wrapped in a list, so Ray does not
    resolve it on every task)."""
    import ray  # the optional extra; a Ray worker process has it (import_ray() checked it on the driver)

    ref = holder[0]
    key = ref.hex()
    t = _transform_cache.get(key)
    if t is None:
        if len(_transform_cache) >= 2:  # a run's map and reduce transforms; an older run's are dropped
            _transform_cache.clear()
        t = _transform_cache[key] = ray.get(ref)
    return t


def _map_schema(transform: MapReduceTransformBase) -> pa.Schema:
    feats = transform.map_features()
    if feats is None:
        raise ConfigError(f"{type(transform).__name__} must declare map_features() to run on the 'ray' engine")
    return feats.arrow_schema


def _out_schema(transform: MapReduceTransformBase) -> pa.Schema:
    feats = transform.output_features()
    if feats is None:
        raise ConfigError(f"{type(transform).__name__} must declare output_features() to run on the 'ray' engine")
    return feats.arrow_schema


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.select(schema.names).cast(schema)


def _to_buffer(table: pa.Table) -> pa.Buffer:
    """``table`` as one Arrow IPC stream buffer: what a task returns to the object store. Pickling a table instead
    would copy the whole parent buffer of every sliced column (a map batch is a slice of its row group)."""
    sink = pa.MockOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    buf = pa.allocate_buffer(sink.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(buf), table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    return buf


def _from_buffer(buf: pa.Buffer) -> pa.Table:
    """The table of :func:`_to_buffer`'s buffer, zero-copy (in the object store's shared memory)."""
    return pa.ipc.open_stream(buf).read_all()


def _map_task(item: dict[str, Any], holder: list, batch_rows: int) -> tuple[pa.Buffer, dict[str, Any]]:
    """Read and map one item; returns ``(mapped rows, summary)``. The rows stay in the object store where the task
    ran; the summary (input rows read, and each key's rows and bytes) is all the driver needs to plan the reduce."""
    transform = _get_transform(holder)
    schema = _map_schema(transform)
    table = read_item(item)
    outs = [_conform(o, schema) for o in map_in_batches(transform, table, item["start"], batch_rows) if o.num_rows]
    mapped = pa.concat_tables(outs) if outs else schema.empty_table()
    keys, sizes = [], []
    if mapped.num_rows:
        order = pc.sort_indices(mapped.column(KEY_COLUMN)).to_numpy()
        bounds, keys = key_groups(mapped.column(KEY_COLUMN), order)
        sizes = transform.group_bytes(mapped, bounds, order).tolist()
    return _to_buffer(mapped), {"rows_in": table.num_rows, "keys": keys, "bytes": sizes}


def _rows_with_keys(key_col: pa.ChunkedArray, keys: list[Any]) -> np.ndarray:
    """Ascending numbers of the rows whose key is one of ``keys``."""
    chosen = pc.is_in(key_col, value_set=pa.array(keys, type=key_col.type))
    return np.flatnonzero(chosen.to_numpy(zero_copy_only=False))


def _split_task(mapped: pa.Buffer, range_keys: list[list[Any]]) -> pa.Buffer | tuple[pa.Buffer, ...]:
    """One map task's rows cut by reduce range, in input order: one buffer per range. Ray runs it where the map
    output lives, so on a cluster of several nodes each row travels once, to the node that reduces its range."""
    table = _from_buffer(mapped)
    key_col = table.column(KEY_COLUMN)
    gather = RowGather.supports(table)
    parts = []
    for keys in range_keys:
        rows = _rows_with_keys(key_col, keys)
        part = RowGather(table, rows).table(0, len(rows)) if gather else gather_rows(table, rows)
        parts.append(_to_buffer(part))
    return parts[0] if len(parts) == 1 else tuple(parts)


def _reduce_task(keys: list[Any], holder: list, *mapped: pa.Buffer) -> tuple[pa.Buffer, list[Any], pa.Buffer | None]:
    """Reduce the groups ``keys`` (ascending) from every map task's rows (in input order): one gather of the
    range, then the datasets engine's per-group reduce. Returns ``(packed rows, stats per group, tails or None)``,
    the tables as IPC buffers."""
    transform = _get_transform(holder)
    schema = _out_schema(transform)
    table = pa.concat_tables([t for t in map(_from_buffer, mapped) if t.num_rows])
    key_col = table.column(KEY_COLUMN)
    rows = _rows_with_keys(key_col, keys)
    # Stable: inside a key the rows keep input order, the order the map tasks' tables were passed in.
    order = rows[pc.sort_indices(key_col.take(pa.array(rows))).to_numpy()] if len(rows) else rows
    bounds, _ = key_groups(key_col, order)
    if len(bounds) - 1 != len(keys):
        raise RuntimeError(f"the reduce range holds {len(bounds) - 1} groups, the map tasks reported {len(keys)}")
    table = table.drop_columns([KEY_COLUMN])
    outs, stats, tails = [], [], []
    for key, part in range_groups(table, order, bounds, keys, 0, len(keys)):
        out, st, tail = transform.reduce_group_with_tail(key, part)
        if out.num_rows:
            outs.append(_conform(out, schema))
        stats.append(st)
        if tail is not None and tail.num_rows:
            tails.append(_conform(tail, schema))
    packed = pa.concat_tables(outs) if outs else schema.empty_table()
    return _to_buffer(packed), stats, _to_buffer(pa.concat_tables(tails)) if tails else None


# --- driver ------------------------------------------------------------------------------------------------------


RAY_LOG_NAME = "hfprep-driver.log"
"""Where a quiet run puts the driver's Ray log records, inside Ray's session log folder (next to the
workers' ``worker-*.out``)."""


class _RayLogFile(logging.Handler):
    """Keeps Ray's driver log records until the session's log folder exists, then writes them to
    :data:`RAY_LOG_NAME` there (``ray.init`` logs its token warning before the session is created)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"))
        self.pending: list[logging.LogRecord] = []
        self.path: str | None = None
        self._file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is None and not self.open():
            self.pending.append(record)
            return
        assert self._file is not None
        self._file.emit(record)

    def open(self) -> bool:
        node = getattr(sys.modules.get("ray._private.worker"), "_global_node", None)
        if node is None:
            return False
        folder = os.path.join(node.get_session_dir_path(), "logs")
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, RAY_LOG_NAME)
        self._file = logging.FileHandler(self.path, encoding="utf-8")
        self._file.setFormatter(self.formatter)
        for r in self.pending:
            self._file.emit(r)
        self.pending.clear()
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _console_handlers() -> list[logging.Handler]:
    """Handlers of Ray's loggers that write to the terminal (files are left alone)."""
    out: list[logging.Handler] = []
    names = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
    for name in names:
        logger = logging.getLogger(name)
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and h not in out:
                out.append(h)
    return out


def _mute(_record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def ray_logs(verbose: bool) -> Iterator[_RayLogFile | None]:
    """Quiet Ray for one run unless ``verbose``: its terminal log handlers are muted, driver records go to
    :data:`RAY_LOG_NAME` in Ray's session log folder (the handler's ``path`` once Ray started), worker output
    stays in that folder (``log_to_driver=False``). Restored on exit.

    Example:
        >>> with ray_logs(verbose=False) as log_file:  # doctest: +SKIP
        ...     run_on_ray(transform, files)
    """
    if verbose:
        yield None
        return
    handler = _RayLogFile()
    ray_logger = logging.getLogger("ray")
    muted = _console_handlers()
    for h in muted:
        h.addFilter(_mute)
    ray_logger.addHandler(handler)
    try:
        yield handler
    finally:
        ray_logger.removeHandler(handler)
        for h in muted:
            h.removeFilter(_mute)
        handler.close()


def _connect(
    ray, address: str | None, num_cpus: int | None, ray_init_kwargs: dict[str, Any] | None, verbose: bool = True
) -> bool:
    """Join ``address`` (or the already connected cluster) or start a local one; True when we started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, **(ray_init_kwargs or {})}
    # Without an address, a bare ray.init() attaches to any Ray instance it finds running on this machine (another
    # user's or test's, possibly shutting down): start our own unless RAY_ADDRESS names a cluster to join.
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not verbose:
        kwargs.setdefault("log_to_driver", False)  # workers' output stays in the session's worker-*.out files
    if address:
        kwargs["address"] = address
    else:
        kwargs["address"] = "local"
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except ConnectionError as e:
        raise ConfigError(f"cannot join the Ray cluster at {address!r}: {e}; check the address (ray status)") from e
    except BaseException:
        # Ctrl-C while Ray starts: stop the processes and threads it has started so far, before the interpreter exits.
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise
    return True


def _user_error(exc: BaseException) -> HfprepError | None:
    """The :class:`HfprepError` a worker raised, as a clean one-line error (Ray's wrappers add tracebacks and
    retry advice to the message, and subclass the error type dynamically)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, HfprepError):
            cls = next(c for c in type(e).__mro__ if issubclass(c, HfprepError) and c.__module__.startswith("hfprep"))
            text = str(e.args[0]) if e.args else str(e)
            return cls(text.strip().splitlines()[0])
        cause = getattr(e, "cause", None)
        stack.extend([cause if isinstance(cause, BaseException) else None, e.__cause__, e.__context__])
    return None


class _OutputSink:
    """The packed rows, range by range in key order, streamed to one Arrow file (never one big table in memory)."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.schema = schema
        self.writer = pa.ipc.new_stream(str(path), schema)

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.writer.write_table(_conform(table, self.schema), max_chunksize=1000)

    def close(self) -> None:
        self.writer.close()


def _get(ray, refs):
    """``ray.get`` with a worker's :class:`HfprepError` raised as itself, in one line (see :func:`_user_error`)."""
    try:
        return ray.get(refs)
    except Exception as e:
        err = _user_error(e)
        if err is not None:
            raise err from None
        raise


def _cancel(ray, refs: Sequence[Any]) -> None:
    """Stop tasks still running for a run that is being abandoned (error, Ctrl-C) on a cluster we do not own."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


def _reduce_inputs(ray, mapped: list[Any], range_keys: list[list[Any]]) -> list[list[Any]]:
    """The object refs each reduce range reads. On one node, every map output whole: the object store is shared
    memory there, a task reads its rows in place. On several nodes, a split task per map output first cuts it by
    range where it lives, so a reduce task pulls only its own rows over the network (a shuffle moves each row once)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) <= 1:
        return [mapped] * len(range_keys)
    split = ray.remote(_split_task).options(num_returns=len(range_keys))
    cuts = [split.remote(m, range_keys) for m in mapped]
    if len(range_keys) == 1:
        cuts = [[c] for c in cuts]
    return [[c[r] for c in cuts] for r in range(len(range_keys))]


def _map_reduce(ray, transform: MapReduceTransformBase, items: list[dict[str, Any]], batch_rows: int,
                sink: _OutputSink, owned: bool) -> tuple[list[Any], pa.Table | None]:
    """Map every read item, plan the reduce ranges from the map tasks' key summaries, reduce the ranges and stream
    their rows into ``sink`` in key order. Returns ``(stats per group in key order, the groups' tails or None)``.

    On an error or Ctrl-C the tasks still running are force-cancelled only on a cluster this run joined (``owned``
    False): a Ray instance the run started is shut down whole, and force-cancelling its tasks first raced with their
    replies inside Ray's core worker ("Tried to complete task that was not pending", an abort instead of exit 130)."""
    holder = [ray.put(transform)]
    # The reduce tasks only pack: they get the transform without its map-side state (the tokenizer).
    reduce_holder = [ray.put(transform.reduce_worker_view())]
    map_task = ray.remote(_map_task).options(num_returns=2)
    reduce_task = ray.remote(_reduce_task)
    maps = [map_task.remote(item, holder, batch_rows) for item in items]
    pending = [m[0] for m in maps]
    try:
        summaries = _get(ray, [m[1] for m in maps])
        transform.rows_in = sum(int(s["rows_in"]) for s in summaries)
        sizes: dict[Any, float] = {}
        for s in summaries:
            for k, b in zip(s["keys"], s["bytes"], strict=True):
                sizes[k] = sizes.get(k, 0.0) + b
        try:
            keys = sorted(sizes)
        except TypeError as e:
            raise DataError(f"the map side produced keys that cannot be ordered: {e}") from None
        gbytes = np.array([sizes[k] for k in keys], dtype=np.float64)
        transform.check_group_bytes(gbytes, keys)
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ranges = plan_reduce_ranges(gbytes, transform.reduce_memory_budget, min_ranges=RANGES_PER_WORKER * workers)
        range_keys = [keys[lo:hi] for lo, hi in ranges]
        inputs = _reduce_inputs(ray, [m[0] for m in maps], range_keys)
        pending = [reduce_task.remote(k, reduce_holder, *parts) for k, parts in zip(range_keys, inputs, strict=True)]
        del maps, inputs  # the driver's refs: each map output goes once the last task that reads it is done
        stats: list[Any] = []
        tails = []
        for ref in pending:
            packed, group_stats, tail = _get(ray, ref)
            sink.add(_from_buffer(packed))
            del packed
            # Through JSON, as the datasets engine's range files hand them over: the same stats either way.
            stats.extend(json.loads(json.dumps([st for st in group_stats if st is not None])))
            if tail is not None:
                tails.append(_from_buffer(tail))
    except BaseException:
        if not owned:
            _cancel(ray, pending)
        raise
    return stats, pa.concat_tables(tails) if tails else None


def refuse_documents(keep_documents: bool) -> None:
    """The Ray engine does not write the documents config: one line saying so when it is asked for.

    Its reduce tasks return the packed rows of a range as one buffer; the documents would need a second one.
    """
    if keep_documents:
        raise ConfigError(
            "the Ray engine does not write the documents config (output.documents / keep_documents); "
            "run this recipe with engine: datasets"
        )


def run_on_ray(
    transform: MapReduceTransformBase,
    source: Any,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    format: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_rows: int = MAP_BATCH_ROWS,
    ray_init_kwargs: dict[str, Any] | None = None,
    verbose: bool = False,
):
    """Run ``transform`` (map -> group -> reduce) on Ray; returns the output as a memory-mapped Dataset.

    Ray is quiet unless ``verbose`` (see :func:`ray_logs`); ``transform.ray_log_path`` then names the file that
    holds its driver log (None when verbose or when Ray did not start).

    After the run ``transform.last_stats`` holds the per-group stats in key order and ``transform.rows_in`` the
    number of input rows, exactly as after :meth:`~hfprep.engines.mapreduce.MapReduceTransformBase.run`.

    ``cache_dir`` receives the output Arrow file; by default it lives until the current ``hfprep run`` ends
    (:func:`hfprep.scratch.run_scope`), or, outside a run, in datasets' temporary cache folder (removed when Python
    exits). Nothing else is left behind, on success, error or Ctrl-C. Transforms whose ``map_input_format`` is ``"arrow"`` get ``pyarrow.Table`` batches,
    the others column dicts of Python values (what ``Dataset.map`` passes).

    Example:
        >>> packed = run_on_ray(transform, ["part-0.parquet"], num_cpus=2)  # doctest: +SKIP
    """
    refuse_documents(transform.keep_documents)
    ray = import_ray()

    out_feats = transform.output_features()
    out_schema = _out_schema(transform)
    _map_schema(transform)  # fail in the driver, not on the workers
    # Ray is quiet for the whole run, shutdown included (ExitStack: the body below keeps its shape).
    quiet = contextlib.ExitStack()
    log_file = quiet.enter_context(ray_logs(verbose))
    try:
        started = _connect(ray, address, num_cpus, ray_init_kwargs, verbose)
    except BaseException:
        quiet.close()
        raise
    # The output file goes to ``cache_dir``; by default, inside a run (``scratch.run_scope``), to a scratch folder
    # that stays until the run ends, otherwise to datasets' temporary cache folder. (A Dataset source is written as
    # Parquet to a scratch folder of its own, removed at the end however the run ends.)
    work: scratch.ScratchDir | None = None
    if cache_dir is not None:
        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
    elif scratch.in_run_scope():
        work = scratch.ScratchDir("ray")
        folder = work.path
    else:
        folder = Path(_temporary_cache_dir())
    partial: Path | None = None
    try:
        with scratch.ScratchDir("raysource") as source_dir:
            sample = sample_texts(source, transform.input_columns()) if isinstance(source, Dataset) else None
            files, fmt = resolve_source(source, format, str(source_dir))
            items, nbytes, _ = plan_reads(files, fmt)
            _preflight(transform, nbytes)
            # The datasets engine's guard, on the same kind of sample (files: a few evenly spaced read items).
            transform.guard_backend(sample if sample is not None else sample_read_items(items, transform.input_columns()))
            in_cache = cache_dir is None and work is None  # datasets' temporary cache folder: a unique cache file name
            final = folder / (f"cache-hfprep-ray-{uuid.uuid4().hex}.arrow" if in_cache else "packed.arrow")
            partial = final.with_name(f".{final.name}.incomplete")
            sink = _OutputSink(partial, out_schema)
            try:
                group_stats, tails = _map_reduce(ray, transform, items, batch_rows, sink, owned=started)
                last, tail_stats = transform.reduce_tails(tails) if tails is not None else (None, None)
                if last is not None:
                    sink.add(last)
            finally:
                sink.close()
            os.replace(partial, final)
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        if work is not None:
            work.cleanup()
        raise
    finally:
        if started:
            ray.shutdown()
        quiet.close()
        transform.ray_log_path = log_file.path if log_file is not None else None
    if work is not None:
        scratch.adopt(work)
    transform.last_stats = group_stats
    if tail_stats is not None:
        transform.last_stats.append(tail_stats)
    return Dataset.from_file(str(final), info=DatasetInfo(features=out_feats))


def _preflight(transform: MapReduceTransformBase, input_bytes: int) -> None:
    """Warn before reading when the input looks too big for ``num_reduce_chunks`` (the exact check runs per group)."""
    chunks = getattr(transform.config, "num_reduce_chunks", None)
    budget = getattr(transform, "reduce_memory_budget", None)
    if not chunks or not budget:
        return
    need = recommended_num_reduce_chunks(int(input_bytes / TEXT_BYTES_PER_TOKEN), budget)
    if need > chunks:
        warn_once(
            f"~{input_bytes / 2**30:.1f} GiB of input may give reduce groups over the reduce_memory_budget of "
            f"{budget / 2**20:.0f} MiB with num_reduce_chunks={chunks}; consider num_reduce_chunks >= {need}",
            stacklevel=3,
        )


def prepare_with_ray(
    config: MapReduceTransformConfigBase,
    source: Any,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    format: str | None = None,
    tokenizer: Any = None,
    cache_dir: str | os.PathLike | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
    transform: MapReduceTransformBase | None = None,
    verbose: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Tokenize -> key -> group -> pack on Ray; the same rows, order and stats as the datasets engine.

    Args:
        config: the transform config (the recipe's tokenize + packing sections).
        source: Parquet / JSONL paths (local, ``hf://``, folders), a source spec with ``files`` and ``format``
            attributes, or a ``datasets.Dataset`` (written to Parquet first; for tests and small data).
        address: an existing cluster to join (``ray.init(address=...)``, e.g. ``"auto"`` on a cluster node or
            ``"ray://head:10001"``); by default a local cluster (or the one this process is connected to).
        num_cpus: CPUs of the local cluster (ignored when joining one).
        format: ``parquet`` or ``json`` when the file names do not tell.
        tokenizer: an already loaded tokenizer (else ``config.tokenizer_name`` is loaded in the driver and
            shipped to the workers, so worker nodes need no copy of it).
        cache_dir: where the output Arrow file goes (default: a new temporary folder).
        ray_init_kwargs: extra ``ray.init`` arguments (e.g. ``runtime_env``).
        transform: an already built transform for ``config`` (e.g. a subclass that records extra stats); it is
            pickled to the workers as is.
        verbose: show Ray's own log lines and progress bars (default: quiet, Ray's driver log goes to a file in
            its session log folder, named by ``transform.ray_log_path``).

    Returns:
        ``(dataset, stats)``: packed rows as a memory-mapped ``datasets.Dataset`` and the dict of
        :attr:`~hfprep.pack.transform.PrepareForTrainingTransform.stats`.

    Example:
        >>> ds, stats = prepare_with_ray(cfg, ["train-0.parquet"], num_cpus=2)  # doctest: +SKIP
        >>> stats["fill_ratio"]  # doctest: +SKIP
        1.0
    """
    if transform is None:
        transform = config.build_transform(tokenizer=tokenizer)
    with scratch.ScratchDir("raycheck") as tmp:
        files, fmt = (None, None)

        if not isinstance(source, Dataset):
            files, fmt = resolve_source(source, format, str(tmp))
            if fmt == "parquet":
                _, _, columns = plan_reads(files[:1], fmt)
                _check_columns(transform, columns or [], files[0])
        else:
            _check_columns(transform, source.column_names, "the dataset")
    out = run_on_ray(
        transform,
        source if files is None else files,
        address=address,
        num_cpus=num_cpus,
        format=fmt or format,
        cache_dir=cache_dir,
        ray_init_kwargs=ray_init_kwargs,
        verbose=verbose,
    )
    return out, transform.stats


def _check_columns(transform: MapReduceTransformBase, columns: Sequence[str], where: str) -> None:
    if columns:  # a file format without a schema up front is checked batch by batch on the workers
        transform.check_input_columns(columns, where)
