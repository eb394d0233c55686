"""The one module that reads private ``datasets`` internals; everything else goes through these functions.

``datasets.Dataset`` has no public zero-copy way to reach its Arrow table or its cache fingerprint, and the
engines need both: the reduce side sorts and slices the whole mapped table with pyarrow (going through
``Dataset.with_format("arrow")`` batches instead copies every group), and the reduce output is cached under a
fingerprint derived from its input's. The attributes read here (``Dataset.data.table``, ``Dataset._indices``,
``Dataset._fingerprint``) are the same in every ``datasets`` release of :data:`TESTED_DATASETS` (pinned by
``tests/test_datasets_internals.py``).

Example:
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"a": [3, 1, 2]}).select([2, 0])
    >>> arrow_table(ds).column("a").to_pylist()
    [2, 3]
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

TESTED_DATASETS = ">=4.0,<6"
"""The ``datasets`` versions these internals were checked with (the range pyproject.toml allows)."""


def arrow_table(ds: Any) -> pa.Table:
    """The Arrow table of ``ds`` in row order: zero-copy, unless an indices mapping (``select``, ``shuffle``) has
    to be applied first."""
    if ds._indices is not None:
        ds = ds.flatten_indices()
    return ds.data.table


def fingerprint(ds: Any) -> str:
    """The cache fingerprint ``datasets`` gave ``ds`` (it names ``ds``'s cache files)."""
    return ds._fingerprint
