"""The Ray Data engine: the same map-reduce as :mod:`hfprep.engines.mapreduce`, spread over a Ray cluster.

The engine only moves data; the work is the transform's own functions, so the rows are the same as the datasets
engine's, in the same order:

* **read + map** (one Ray task per Parquet row group / JSONL file, on the workers): each batch of
  ``MAP_BATCH_ROWS`` input rows goes through ``transform.map_batch(batch, indices)`` with the *global* input row
  numbers as ``indices``, so every document carries ``__index__`` (its input row) next to ``__key__``.
* **group** (Ray's shuffle): ``groupby("__key__").map_groups(...)``. Ray does not keep input order inside a group,
  so each group is sorted by ``__index__`` first; then the group size is checked against
  ``reduce_memory_budget`` (the same ``check_group_bytes`` as the datasets engine) and
  ``transform.reduce_group_with_tail(key, rows)`` packs it. A group's leftover (dense packing's incomplete tail)
  travels back marked ``__tail__``; the driver packs all of them with ``transform.reduce_tails`` after the last
  group, exactly as the datasets engine does.
* **collect** (driver): the packed rows stream into one Arrow file in a cache folder, in ascending key order, and
  come back as a memory-mapped ``datasets.Dataset`` (never one big in-memory table). Per-group stats travel as
  extra rows and are merged exactly as the datasets engine merges them.

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
import shutil
import sys
import uuid
import warnings
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
from ..errors import ConfigError, DataError, HfprepError
from ..tokenization.backends import sample_rows, sample_texts
from .mapreduce import (
    BYTES_PER_TOKEN_IN_GROUP,
    INDEX_COLUMN,
    KEY_COLUMN,
    MapReduceTransformBase,
    MapReduceTransformConfigBase,
    RowGather,
    _temporary_cache_dir,
    map_in_batches,
    parquet_sample_texts,
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

SHUFFLE_STRATEGIES = {"sort": "sort_shuffle_pull_based", "hash": "shuffle_v2"}
"""Ray Data shuffles for the group step. ``sort`` (default) starts at once and emits groups in key order; ``hash``
runs aggregator actors (slower to start, no range sampling)."""

ROWS_COLUMN = "__rows__"
SEQ_COLUMN = "__seq__"
STATS_COLUMN = "__stats__"
JSON_SAMPLE_BYTES = 1 << 20  # read from each sampled JSON Lines file for the backend guard
TAIL_COLUMN = "__tail__"
"""True on a group's leftover rows (dense packing's tail): the driver packs them after the last group."""
META_KEY = -1
"""Key of the bookkeeping rows (input rows read per task); real keys are >= 0."""

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
        import ray.data  # binds `ray` too
    except ImportError as e:
        raise ConfigError(f"the 'ray' engine needs Ray Data, which is not installed; run: {RAY_INSTALL_HINT}") from e
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
            raise DataError(f"{item['path']}: not valid JSON Lines ({e})") from e


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
    return feats.arrow_schema.append(pa.field(ROWS_COLUMN, pa.int64()))


def _out_schema(transform: MapReduceTransformBase) -> pa.Schema:
    feats = transform.output_features()
    if feats is None:
        raise ConfigError(f"{type(transform).__name__} must declare output_features() to run on the 'ray' engine")
    return feats.arrow_schema


def _null_row(schema: pa.Schema, values: dict[str, Any]) -> pa.Table:
    return pa.table({f.name: pa.array([values.get(f.name)], type=f.type) for f in schema}, schema=schema)


def _conform(table: pa.Table, schema: pa.Schema, extra: dict[str, pa.Array]) -> pa.Table:
    cols = [table.column(f.name) if f.name in table.column_names else extra[f.name] for f in schema]
    return pa.Table.from_arrays(cols, names=schema.names).cast(schema)


def _map_task(plan: pa.Table, holder: list, batch_rows: int) -> Iterator[pa.Table]:
    transform = _get_transform(holder)
    schema = _map_schema(transform)
    for item in plan.to_pylist():
        table = read_item(item)
        for out in map_in_batches(transform, table, item["start"], batch_rows):
            if out.num_rows:
                yield _conform(out, schema, {ROWS_COLUMN: pa.array(np.zeros(out.num_rows, np.int64))})
        # The bookkeeping row: how many input rows this task read (docs dropped by tokenization have no row).
        yield _null_row(schema, {KEY_COLUMN: META_KEY, INDEX_COLUMN: -1, ROWS_COLUMN: table.num_rows})


def _reduce_task(group: pa.Table, holder: list) -> pa.Table:
    transform = _get_transform(holder)
    schema = _out_schema(transform).append(pa.field(KEY_COLUMN, pa.int64()))
    schema = schema.append(pa.field(SEQ_COLUMN, pa.int64())).append(pa.field(STATS_COLUMN, pa.string()))
    schema = schema.append(pa.field(TAIL_COLUMN, pa.bool_()))
    key = group.column(KEY_COLUMN)[0].as_py()
    if key == META_KEY:
        rows_in = int(pc.sum(group.column(ROWS_COLUMN)).as_py() or 0)
        return _null_row(schema, {KEY_COLUMN: META_KEY, STATS_COLUMN: json.dumps({"rows_in": rows_in})})
    # Ray's shuffle does not keep input order: restore it before packing (the datasets engine's order), with the
    # datasets engine's numpy gather where the columns allow it (Arrow's take copies list columns slowly).
    group = group.select([c for c in group.column_names if c not in (KEY_COLUMN, ROWS_COLUMN)])
    order = pc.sort_indices(group.column(INDEX_COLUMN))
    n = group.num_rows
    if RowGather.supports(group):
        group = RowGather(group, order.to_numpy()).table(0, n)
    else:
        group = group.take(order)
    transform.check_group_bytes(transform.group_bytes(group, np.array([0, n]), np.arange(n)), [key])
    out, stats, tail = transform.reduce_group_with_tail(key, group)
    parts = []
    for rows, is_tail in ((out, False), (tail, True)):
        if rows is None:
            continue
        m = rows.num_rows
        extra = {
            KEY_COLUMN: pa.array(np.full(m, key, np.int64)),
            SEQ_COLUMN: pa.array(np.arange(m, dtype=np.int64)),
            STATS_COLUMN: pa.nulls(m, pa.string()),
            TAIL_COLUMN: pa.array(np.full(m, is_tail)),
        }
        parts.append(_conform(rows, schema, extra))
    return pa.concat_tables([*parts, _null_row(schema, {KEY_COLUMN: key, STATS_COLUMN: json.dumps(stats)})])


# --- driver ------------------------------------------------------------------------------------------------------


RAY_LOG_NAME = "hfprep-driver.log"
"""Where a quiet run puts the driver's Ray log records, inside Ray's session log folder (next to Ray Data's
``ray-data/`` logs and the workers' ``worker-*.out``)."""


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
    stays in that folder (``log_to_driver=False``) and Ray Data's progress bars are off. Restored on exit.

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


class _OrderedSink:
    """Streams packed rows to an Arrow file; puts them in (key, row) order at the end if they came unordered."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema
        self.spill = folder / "unordered.arrow"
        self.writer = pa.ipc.new_stream(str(self.spill), schema)
        self.keys: list[np.ndarray] = []
        self.seqs: list[np.ndarray] = []
        self.stats: dict[int, dict[str, Any]] = {}
        self.tails: list[pa.Table] = []  # (key, seq) + rows of the groups' leftovers: small, kept in memory

    def add(self, batch: pa.Table) -> None:
        is_stats = pc.is_valid(batch.column(STATS_COLUMN))
        if pc.any(is_stats).as_py():
            st = batch.filter(is_stats)
            for k, s in zip(st.column(KEY_COLUMN).to_pylist(), st.column(STATS_COLUMN).to_pylist()):
                if k in self.stats:
                    raise RuntimeError(f"reduce group {k} was emitted twice; the Ray shuffle split a group")
                self.stats[k] = json.loads(s)
            batch = batch.filter(pc.invert(is_stats))
        is_tail = pc.fill_null(batch.column(TAIL_COLUMN), False)
        if pc.any(is_tail).as_py():
            self.tails.append(batch.filter(is_tail))
            batch = batch.filter(pc.invert(is_tail))
        if batch.num_rows:
            self.keys.append(batch.column(KEY_COLUMN).to_numpy())
            self.seqs.append(batch.column(SEQ_COLUMN).to_numpy())
            self.writer.write_table(batch.select(self.schema.names).cast(self.schema))

    def tail_table(self) -> pa.Table | None:
        """The groups' leftover rows in (key, row) order, token columns only; None when no group left any."""
        if not self.tails:
            return None
        tails = pa.concat_tables(self.tails)
        tails = tails.take(pc.sort_indices(tails, [(KEY_COLUMN, "ascending"), (SEQ_COLUMN, "ascending")]))
        return tails.select(self.schema.names).cast(self.schema)

    def finish(self, final: Path, last: pa.Table | None = None) -> None:
        """Write the rows in (key, row) order to ``final``, then ``last`` (the final pass's rows)."""
        last = last.select(self.schema.names).cast(self.schema) if last is not None and last.num_rows else None
        keys = np.concatenate(self.keys) if self.keys else np.zeros(0, np.int64)
        seqs = np.concatenate(self.seqs) if self.seqs else np.zeros(0, np.int64)
        dk, ds = np.diff(keys), np.diff(seqs)
        if np.all((dk > 0) | ((dk == 0) & (ds > 0))):
            if last is not None:
                self.writer.write_table(last)
            self.writer.close()
            shutil.move(self.spill, final)  # a rename, or a copy when the output is on another disk
            return
        self.writer.close()
        perm = np.lexsort((seqs, keys))
        # Runs of consecutive rows in the spill become one slice each: a few per group, not one per row.
        breaks = np.flatnonzero(np.diff(perm) != 1) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [len(perm)]])
        with pa.memory_map(str(self.spill)) as src:
            table = pa.ipc.open_stream(src).read_all()
            with pa.ipc.new_stream(str(final), self.schema) as w:
                for a, b in zip(starts.tolist(), ends.tolist()):
                    w.write_table(table.slice(int(perm[a]), b - a))
                if last is not None:
                    w.write_table(last)
            del table
        self.spill.unlink()


def run_on_ray(
    transform: MapReduceTransformBase,
    source: Any,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    format: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_rows: int = MAP_BATCH_ROWS,
    shuffle: str = "sort",
    ray_init_kwargs: dict[str, Any] | None = None,
    verbose: bool = False,
):
    """Run ``transform`` (map -> group -> reduce) on Ray Data; returns the output as a memory-mapped Dataset.

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
    ray = import_ray()

    if shuffle not in SHUFFLE_STRATEGIES:
        raise ConfigError(f"shuffle {shuffle!r} is not supported; choose one of {sorted(SHUFFLE_STRATEGIES)}")

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
    # Work (the source written as Parquet, the unordered spill) happens in a scratch folder removed at the end,
    # however the run ends. The output file goes to ``cache_dir``; by default it stays in the scratch folder until the
    # current run ends (``scratch.run_scope``), or becomes a file in datasets' temporary cache folder.
    work = scratch.ScratchDir("ray")
    keep_work = False
    if cache_dir is not None:
        folder = Path(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
    elif scratch.in_run_scope():
        folder, keep_work = work.path, True
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
            holder = [ray.put(transform)]
            # The reduce tasks only pack: they get the transform without its map-side state (the tokenizer).
            reduce_holder = [ray.put(transform.reduce_worker_view())]
            ctx = ray.data.DataContext.get_current()
            saved_strategy = ctx.shuffle_strategy
            ctx.shuffle_strategy = SHUFFLE_STRATEGIES[shuffle]
            saved_bars = ctx.enable_progress_bars
            ctx.enable_progress_bars = verbose and saved_bars  # its bars name Ray operators, not hfprep stages
            plan = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
            mapped = plan.map_batches(
                _map_task, batch_size=1, batch_format="pyarrow", fn_kwargs={"holder": holder, "batch_rows": batch_rows}
            )
            # One shuffle partition per key (+1 for the bookkeeping key): a reduce task holds ~one group, not many.
            chunks = getattr(transform.config, "num_reduce_chunks", None) or 64
            reduced = mapped.groupby(KEY_COLUMN, num_partitions=chunks + 1).map_groups(
                _reduce_task, batch_format="pyarrow", fn_kwargs={"holder": reduce_holder}
            )
            sink = _OrderedSink(work.path, out_schema)
            batches = iter(reduced.iter_batches(batch_size=None, batch_format="pyarrow"))
            try:
                for batch in batches:
                    sink.add(batch)
            except Exception as e:
                err = _user_error(e)
                if err is not None:
                    raise err from None
                raise
            finally:
                # Stop Ray Data's executor and prefetch threads now, on error and Ctrl-C too: left to the garbage
                # collector, they could still call into Ray after ray.shutdown() below.
                with contextlib.suppress(Exception):
                    batches.close()
                ctx.shuffle_strategy = saved_strategy
                ctx.enable_progress_bars = saved_bars
            in_cache = cache_dir is None and not keep_work  # datasets' temporary cache folder: a unique cache file name
            final = folder / (f"cache-hfprep-ray-{uuid.uuid4().hex}.arrow" if in_cache else "packed.arrow")
            partial = final.with_name(f".{final.name}.incomplete")
            tails = sink.tail_table()
            last, tail_stats = transform.reduce_tails(tails) if tails is not None else (None, None)
            sink.finish(partial, last)
            os.replace(partial, final)
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        work.cleanup()
        raise
    finally:
        if started:
            ray.shutdown()
        quiet.close()
        transform.ray_log_path = log_file.path if log_file is not None else None
    if keep_work:
        scratch.adopt(work)
    else:
        work.cleanup()
    meta = sink.stats.pop(META_KEY, {"rows_in": 0})
    transform.last_stats = [sink.stats[k] for k in sorted(sink.stats)]
    if tail_stats is not None:
        transform.last_stats.append(tail_stats)
    transform.rows_in = int(meta["rows_in"])
    return Dataset.from_file(str(final), info=DatasetInfo(features=out_feats))


def _preflight(transform: MapReduceTransformBase, input_bytes: int) -> None:
    """Warn before reading when the input looks too big for ``num_reduce_chunks`` (the exact check runs per group)."""
    chunks = getattr(transform.config, "num_reduce_chunks", None)
    budget = getattr(transform, "reduce_memory_budget", None)
    if not chunks or not budget:
        return
    need = recommended_num_reduce_chunks(int(input_bytes / TEXT_BYTES_PER_TOKEN), budget)
    if need > chunks:
        warnings.warn(
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
    """Tokenize -> key -> group -> pack on Ray Data; the same rows, order and stats as the datasets engine.

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
