"""The Hub dataset-repo layout on disk, and atomic, deterministic writes into it.

A prepared dataset is a folder that ``load_dataset(folder)`` and the Hub both understand::

    README.md                              dataset card (YAML front matter: configs, dataset_info, hfprep keys)
    data/<split>-00000-of-00002.parquet    shards, 5-digit index and count (what push_to_hub writes)
    data/<split>-00001-of-00002.parquet
    images/*.png                           figures shown in the card

Every writer goes through :func:`atomic_output`: work happens in a hidden sibling folder that is renamed into
place only when complete, so a crash or Ctrl-C never leaves a folder that looks finished.

Example:
    >>> import tempfile, pyarrow as pa, os
    >>> out = os.path.join(tempfile.mkdtemp(), "ds")
    >>> with atomic_output(out) as tmp:
    ...     paths = write_split(pa.table({"x": [1, 2, 3]}), tmp, "train", max_rows_per_shard=2)
    >>> sorted(os.listdir(os.path.join(out, "data")))
    ['train-00000-of-00002.parquet', 'train-00001-of-00002.parquet']
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import OutputExistsError

DATA_DIR = "data"
CARD_NAME = "README.md"
IMAGES_DIR = "images"
DEFAULT_ROW_GROUP_ROWS = 1000
DEFAULT_MAX_SHARD_BYTES = 500 * 2**20


def shard_filename(split: str, index: int, num_shards: int) -> str:
    """``data/<split>-XXXXX-of-YYYYY.parquet`` (relative to the dataset folder)."""
    return f"{DATA_DIR}/{split}-{index:05d}-of-{num_shards:05d}.parquet"


def split_glob(split: str) -> str:
    """The ``configs`` data_files pattern of a split, as ``push_to_hub`` writes it."""
    return f"{DATA_DIR}/{split}-*"


def _check_writable(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output folder {str(path)!r} already exists; pass --overwrite (or pick another output)")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename, on error it is removed.

    Raises :class:`~hfprep.errors.OutputExistsError` up front when ``path`` exists and ``overwrite`` is False.
    """
    final = Path(path).absolute()
    _check_writable(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _check_writable(final, overwrite)  # someone may have created it meanwhile
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:  # Ctrl-C included: never leave the temp folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def hf_schema(table: pa.Table, features=None) -> pa.Schema:
    """Schema with datasets' ``huggingface`` metadata, so ``load_dataset`` restores the exact features."""
    if features is None:
        from datasets import Features

        features = Features.from_arrow_schema(table.schema)
    meta = {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()}
    return table.schema.with_metadata(meta)


def write_parquet(
    table: pa.Table,
    path: str | os.PathLike,
    features=None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    compression: str = "zstd",
    **kwargs,
) -> None:
    """Write one Parquet file deterministically (fixed row groups and settings: same table -> same bytes)."""
    table = table.replace_schema_metadata(None).cast(hf_schema(table, features))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        str(path),
        row_group_size=row_group_rows,
        compression=compression,
        write_statistics=False,
        **kwargs,
    )


def plan_shards(table: pa.Table, max_rows_per_shard: int | None, max_shard_bytes: int | None) -> int:
    """Number of shards so that each holds at most ``max_rows_per_shard`` rows and ~``max_shard_bytes`` bytes."""
    n = table.num_rows
    by_rows = -(-n // max_rows_per_shard) if max_rows_per_shard else 1
    by_bytes = -(-table.nbytes // max_shard_bytes) if max_shard_bytes else 1
    return max(1, by_rows, by_bytes)


def write_split(
    table: pa.Table,
    folder: str | os.PathLike,
    split: str,
    features=None,
    max_rows_per_shard: int | None = None,
    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    compression: str = "zstd",
) -> list[str]:
    """Write ``table`` as the shards of ``split`` under ``folder``; returns the relative shard paths.

    Shards are contiguous, equal-sized slices (the last may be shorter), so the row order is kept.
    """
    num_shards = plan_shards(table, max_rows_per_shard, max_shard_bytes)
    per = -(-table.num_rows // num_shards) if table.num_rows else 0
    paths = []
    for i in range(num_shards):
        rel = shard_filename(split, i, num_shards)
        write_parquet(
            table.slice(i * per, per), Path(folder) / rel, features, row_group_rows=row_group_rows, compression=compression
        )
        paths.append(rel)
    return paths


def list_split_files(folder: str | os.PathLike) -> dict[str, list[str]]:
    """``{split: [relative shard paths]}`` found under ``folder/data`` (sorted)."""
    out: dict[str, list[str]] = {}
    data = Path(folder) / DATA_DIR
    for p in sorted(data.glob("*-*-of-*.parquet")):
        split = p.name.rsplit("-", 3)[0]
        out.setdefault(split, []).append(f"{DATA_DIR}/{p.name}")
    return out
