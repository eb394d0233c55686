"""Sources: turn a recipe's ``source`` section into a :class:`SourceSpec` (resolved files, format, rules) and load it.

The spec is engine-neutral: the datasets engine loads it with :func:`load_source`; a distributed engine reads
``spec.paths`` with its own Parquet/JSON readers and applies the same row rules with
:meth:`SourceSpec.prepare_table` (rename columns, then keep the rows of one split). The order of operations is
fixed for every engine: read -> first ``max_rows`` rows -> rename ``columns`` -> split filter.

The held-out rule is a pure function of a row's content (:func:`heldout_mask`), so it gives the same split on
any engine, any number of workers and any row order.

Example:
    >>> import tempfile, os, json
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.jsonl")
    >>> _ = open(p, "w").write("\\n".join(json.dumps({"text": t}) for t in ["a", "b", "c"]))
    >>> spec = SourceSpec(kind="files", paths=[p], format="jsonl", columns={"text": "content"})
    >>> load_source(spec)["content"]
    ['a', 'b', 'c']
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from .errors import DataError, HubError

FORMAT_BY_EXT = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".txt": "text",
}
# datasets' packaged builder for each file format.
BUILDER = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv", "text": "text"}
TEXT_DIR_COLUMNS = ("text", "path")


@dataclasses.dataclass
class SourceSpec:
    """A resolved source: what to read and which row rules to apply.

    Attributes:
        kind: ``hub``, ``files`` or ``text_dir``.
        paths: resolved local files (``files``: in the order given, globs sorted; ``text_dir``: sorted).
        format: file format for ``files`` (``jsonl``, ``json``, ``parquet``, ``csv``, ``text``); ``text_dir``
            yields rows ``{"text": file content, "path": path relative to root}``.
        hub_id, config_name, split, revision: Hub dataset coordinates.
        root: the ``text_dir`` folder (``path`` values are relative to it).
        streaming: read as an ``IterableDataset``.
        max_rows: keep the first N rows.
        columns: renames ``{source_column: new_name}``.
        heldout_fraction, split_columns: the held-out rule (see :func:`heldout_mask`).
        keep: ``all`` rows, only the ``train`` side or only the ``heldout`` side of the rule.
    """

    kind: Literal["hub", "files", "text_dir"]
    paths: list[str] = dataclasses.field(default_factory=list)
    format: str = "auto"
    hub_id: str | None = None
    config_name: str | None = None
    split: str = "train"
    revision: str | None = None
    root: str | None = None
    encoding: str = "utf-8"
    streaming: bool = False
    max_rows: int | None = None
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    heldout_fraction: float = 0.0
    split_columns: list[str] = dataclasses.field(default_factory=list)
    keep: Literal["all", "train", "heldout"] = "all"

    def for_split(self, keep: Literal["all", "train", "heldout"]) -> SourceSpec:
        """A copy that keeps only one side of the held-out rule."""
        return dataclasses.replace(self, keep=keep)

    def describe(self) -> str:
        """Short human description (cards, summaries)."""
        if self.kind == "hub":
            cfg = f" ({self.config_name})" if self.config_name else ""
            rev = f"@{self.revision}" if self.revision else ""
            return f"{self.hub_id}{rev}{cfg}, split {self.split}"
        if self.kind == "text_dir":
            return f"{len(self.paths)} text files under {self.root}"
        return f"{len(self.paths)} {self.format} file(s)"

    def prepare_table(self, table: pa.Table) -> pa.Table:
        """Apply the row rules that follow ``max_rows`` to one Arrow batch: rename columns, then the split filter."""
        if self.columns:
            missing = [c for c in self.columns if c not in table.column_names]
            if missing:
                raise DataError(
                    f"source.columns renames {missing}, but the source has columns {table.column_names}; "
                    "fix source.columns in the recipe"
                )
            table = table.rename_columns([self.columns.get(c, c) for c in table.column_names])
        if self.keep == "all" or self.heldout_fraction <= 0:
            return table if self.keep != "heldout" else table.slice(0, 0)
        mask = heldout_mask(table.select(self.split_columns).to_pydict(), self.split_columns, self.heldout_fraction)
        return table.filter(pa.array(mask if self.keep == "heldout" else ~mask))


def row_fraction(values: Sequence[Any]) -> float:
    """A row's position in [0, 1): the first 8 bytes of sha256 of the canonical JSON of ``values``."""
    blob = json.dumps(list(values), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.sha256(blob.encode("utf-8")).digest()[:8], "big") / 2.0**64


def heldout_mask(batch: dict[str, Sequence[Any]], columns: Sequence[str], fraction: float) -> np.ndarray:
    """Boolean mask of the rows that go to the held-out split: ``row_fraction(row[columns]) < fraction``.

    Depends only on the row's content, so every engine (and every ``num_proc``) splits identically.

    Example:
        >>> heldout_mask({"content": ["a", "b", "c"]}, ["content"], 0.0).tolist()
        [False, False, False]
    """
    missing = [c for c in columns if c not in batch]
    if missing:
        raise DataError(
            f"the held-out split hashes column(s) {missing}, but the rows have {sorted(batch)}; "
            "set source.columns / tokenize column names so the strategy's input columns exist"
        )
    n = len(batch[columns[0]]) if columns else 0
    if fraction <= 0:
        return np.zeros(n, dtype=np.bool_)
    cols = [batch[c] for c in columns]
    return np.fromiter((row_fraction([c[i] for c in cols]) < fraction for i in range(n)), dtype=np.bool_, count=n)


# ----------------------------------------------------------------------------------------------- resolving


def _detect_format(paths: Sequence[str], declared: str) -> str:
    if declared != "auto":
        return declared
    fmts = set()
    for p in paths:
        name = p[:-3] if p.endswith((".gz", ".zst")) else p
        ext = os.path.splitext(name)[1].lower()
        if ext not in FORMAT_BY_EXT:
            raise DataError(
                f"cannot tell the format of source file {p!r} from its extension; set source.format "
                f"to one of {sorted(set(FORMAT_BY_EXT.values()))}"
            )
        fmts.add(FORMAT_BY_EXT[ext])
    if len(fmts) > 1:
        raise DataError(f"source files mix formats {sorted(fmts)}; use one format per recipe (set source.format)")
    return fmts.pop()


def _expand_files(patterns: Sequence[str]) -> list[str]:
    out: list[str] = []
    for pat in patterns:
        if globlib.has_magic(pat):
            hits = sorted(p for p in globlib.glob(pat, recursive=True) if os.path.isfile(p))
            if not hits:
                raise DataError(f"source.files: no file matches {pat!r}; check the pattern (relative to the recipe)")
            out.extend(hits)
        elif not os.path.isfile(pat):
            raise DataError(f"source.files: file {pat!r} does not exist; fix the path (relative to the recipe)")
        else:
            out.append(pat)
    return out


def list_text_dir(root: str, pattern: str = "**/*", max_files: int | None = None) -> list[str]:
    """Files under ``root`` matching ``pattern``, sorted by their relative path (hidden files skipped)."""
    if not os.path.isdir(root):
        raise DataError(f"source.text_dir: folder {root!r} does not exist; fix the path (relative to the recipe)")
    base = Path(root)
    rels = sorted(
        p.relative_to(base).as_posix()
        for p in base.glob(pattern)
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )
    if max_files is not None:
        rels = rels[:max_files]
    if not rels:
        raise DataError(f"source.text_dir: no file under {root!r} matches {pattern!r}; check source.glob")
    return [str(base / r) for r in rels]


def resolve_source(section, split_columns: Sequence[str] = (), heldout_fraction: float = 0.0) -> SourceSpec:
    """Build the :class:`SourceSpec` of a recipe's ``source`` section (paths already resolved by the recipe)."""
    common = {
        "streaming": section.streaming,
        "max_rows": section.max_rows,
        "columns": dict(section.columns),
        "heldout_fraction": heldout_fraction,
        "split_columns": list(split_columns),
        "encoding": section.encoding,
    }
    if section.kind == "hub":
        return SourceSpec(
            kind="hub",
            hub_id=section.hub,
            config_name=section.config,
            split=section.split,
            revision=section.revision,
            format=section.format,
            **common,
        )
    if section.kind == "text_dir":
        paths = list_text_dir(section.text_dir, section.glob, section.max_files)
        return SourceSpec(kind="text_dir", paths=paths, root=section.text_dir, format="text_dir", **common)
    paths = _expand_files(section.files)
    return SourceSpec(kind="files", paths=paths, format=_detect_format(paths, section.format), **common)


# ----------------------------------------------------------------------------------------------- loading


def read_text_file(path: str, encoding: str = "utf-8") -> str:
    """A whole file as text; undecodable bytes become U+FFFD (deterministic, never an error mid-run)."""
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        return f.read()


def _text_dir_rows(paths: list[str], root: str, encoding: str, stamps: list[str]) -> Iterator[dict[str, str]]:
    # ``stamps`` (size + mtime) only feeds datasets' cache fingerprint, so an edited file is re-read.
    del stamps
    for p in paths:
        yield {"text": read_text_file(p, encoding), "path": Path(p).relative_to(root).as_posix()}


def text_dir_generator_kwargs(spec: SourceSpec) -> dict[str, Any]:
    stamps = [f"{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}" for p in spec.paths]
    return {"paths": spec.paths, "root": spec.root, "encoding": spec.encoding, "stamps": stamps}


def _load_raw(spec: SourceSpec):
    from datasets import Dataset, Features, IterableDataset, Value, load_dataset

    if spec.kind == "text_dir":
        feats = Features({"text": Value("string"), "path": Value("string")})
        kwargs = text_dir_generator_kwargs(spec)
        if spec.streaming:
            return IterableDataset.from_generator(_text_dir_rows, features=feats, gen_kwargs=kwargs)
        return Dataset.from_generator(_text_dir_rows, features=feats, gen_kwargs=kwargs)
    if spec.kind == "files":
        if not _files_have_rows(spec):
            raise DataError(f"source {spec.describe()} has zero rows; check the files (nothing to prepare)")
        try:
            return load_dataset(BUILDER[spec.format], data_files=spec.paths, split="train", streaming=spec.streaming)
        except Exception as e:  # datasets raises many types for unreadable files
            if "corresponds to no data" in str(e):  # every file is empty
                raise DataError(f"source {spec.describe()} has zero rows; check the files (nothing to prepare)") from e
            raise DataError(
                f"could not read source files as {spec.format} ({spec.paths[0]!r}...): {_first_line(e)}; "
                "check source.format and the files"
            ) from e
    try:
        return load_dataset(
            spec.hub_id, name=spec.config_name, split=spec.split, revision=spec.revision, streaming=spec.streaming
        )
    except Exception as e:
        raise HubError(
            f"could not load Hub dataset {spec.hub_id!r} (config {spec.config_name!r}, split {spec.split!r}): "
            f"{_first_line(e)}; check the id/config/split, your network and HF_TOKEN"
        ) from e


def _files_have_rows(spec: SourceSpec) -> bool:
    """Cheap up-front check so an empty source is one clear error, not a datasets builder failure."""
    if spec.format == "parquet":
        import pyarrow.parquet as pq

        try:
            return any(pq.read_metadata(p).num_rows > 0 for p in spec.paths)
        except Exception:  # unreadable: let the loader report it
            return True
    if any(p.endswith((".gz", ".zst")) for p in spec.paths):
        return True
    need = 2 if spec.format == "csv" else 1  # a csv header alone has no rows
    for p in spec.paths:
        with open(p, "rb") as f:
            lines = 0
            for line in f:
                lines += bool(line.strip())
                if lines >= need:
                    return True
    return False


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def load_source(spec: SourceSpec):
    """Load the source as a ``datasets.Dataset`` (or ``IterableDataset`` when streaming), rules applied.

    Raises :class:`~hfprep.errors.DataError` when the source has zero rows (non-streaming) or a file is
    unreadable, and :class:`~hfprep.errors.HubError` when a Hub dataset cannot be loaded.
    """
    ds = _load_raw(spec)
    if spec.max_rows is not None:
        ds = ds.take(spec.max_rows) if spec.streaming else ds.select(range(min(spec.max_rows, len(ds))))
    if spec.columns:
        have = list(ds.column_names or [])
        missing = [c for c in spec.columns if have and c not in have]
        if missing:
            raise DataError(
                f"source.columns renames {missing}, but the source has columns {have}; fix source.columns"
            )
        ds = ds.rename_columns(spec.columns)
    if not spec.streaming and len(ds) == 0:
        raise DataError(f"source {spec.describe()} has zero rows; check the path/split (nothing to prepare)")
    return ds


def select_split(ds, spec: SourceSpec, num_proc: int | None = None):
    """Keep one side of the held-out rule (``spec.keep``); a no-op for ``all``."""
    if spec.keep == "all" or spec.heldout_fraction <= 0:
        return ds if spec.keep != "heldout" else ds.select([])
    cols, frac, want = spec.split_columns, spec.heldout_fraction, spec.keep == "heldout"

    def keep(batch: dict[str, list[Any]]) -> list[bool]:
        m = heldout_mask(batch, cols, frac)
        return (m if want else ~m).tolist()

    if spec.streaming:
        return ds.filter(keep, batched=True)
    return ds.filter(keep, batched=True, num_proc=num_proc, desc=f"split {spec.keep}")
