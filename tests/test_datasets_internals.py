"""The private ``datasets`` attributes hfprep reads (through :mod:`hfprep.datasets_internals` only) behave as the
adapter assumes, on the installed ``datasets``; and that version is inside the range the adapter was checked with
and pyproject.toml allows. A ``datasets`` release outside the range fails here first, with the reason."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import datasets
import pyarrow as pa
from datasets import Dataset
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from hfprep.datasets_internals import TESTED_DATASETS, arrow_table, fingerprint


def test_installed_datasets_is_in_the_tested_range():
    assert Version(datasets.__version__) in SpecifierSet(TESTED_DATASETS), (
        f"datasets {datasets.__version__} is outside {TESTED_DATASETS}: re-check hfprep/datasets_internals.py "
        "against it, then widen TESTED_DATASETS and pyproject.toml together"
    )


def test_tested_range_is_the_one_pyproject_allows():
    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    (dep,) = [d for d in deps if re.match(r"datasets\b", d)]
    assert SpecifierSet(dep.removeprefix("datasets")) == SpecifierSet(TESTED_DATASETS)


def test_arrow_table_without_indices_is_the_dataset_table_itself():
    ds = Dataset.from_dict({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    table = arrow_table(ds)
    assert isinstance(table, pa.Table)
    assert table.to_pydict() == {"a": [1, 2, 3], "b": ["x", "y", "z"]}
    # Zero-copy: the same buffers as the dataset's own (what the engines rely on for speed).
    assert table.column("a").chunk(0).buffers()[1].address == ds.data.table.column("a").chunk(0).buffers()[1].address


def test_arrow_table_applies_select_and_shuffle_in_row_order():
    ds = Dataset.from_dict({"a": list(range(10))})
    picked = ds.select([7, 2, 2, 9])
    assert arrow_table(picked).column("a").to_pylist() == [7, 2, 2, 9] == picked["a"]
    shuffled = ds.shuffle(seed=3)
    assert arrow_table(shuffled).column("a").to_pylist() == shuffled["a"]


def test_fingerprint_is_the_one_datasets_gives_and_changes_with_the_data():
    ds = Dataset.from_dict({"a": [1, 2]})
    mapped = ds.map(lambda r: {"a": r["a"] + 1}, new_fingerprint="f" * 32)
    assert fingerprint(mapped) == "f" * 32
    assert isinstance(fingerprint(ds), str) and fingerprint(ds) != fingerprint(mapped)
    assert fingerprint(ds.select([1])) != fingerprint(ds)
