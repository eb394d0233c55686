"""Read local sources in bounded batches, straight into tokenization: no ``datasets`` Arrow copy of the input.

The direct engine (:mod:`hfprep.engines.direct`) reads a :class:`~hfprep.source.loading.SourceSpec`'s files with
:func:`read_batches`: only the columns the strategy reads, in source order, a batch of about ``batch_bytes`` at a
time, with the spec's row rules applied in the order every engine applies them (first ``max_rows`` rows, then the
column renames). The rows are those ``load_source(spec)`` gives:

* JSON Lines (``.jsonl``): Arrow's JSON reader with an explicit schema of the needed columns (strings), other keys
  ignored; blank lines are skipped, as ``load_dataset("json")`` skips them. A line that is not valid JSON, or whose
  column is not a string, is one error naming the file and the line
  (:func:`~hfprep.source.loading.locate_json_error`, the one wording every reader uses).
* Parquet: row group by row group, only the needed columns.
* ``text_dir``: one row per file (``text``, ``path``), decoded per ``source.encoding`` / ``source.decode_errors``.

Which sources can be read this way is :func:`reads_directly`; the others go through ``load_source``.

Example:
    >>> import json, os, tempfile
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.jsonl")
    >>> _ = open(p, "w").write("\\n".join(json.dumps({"text": t, "n": 1}) for t in ["a", "b", "c"]))
    >>> spec = SourceSpec(kind="files", paths=[p], format="jsonl", columns={"text": "content"})
    >>> [(b.start, b.table.column("content").to_pylist()) for b in read_batches(spec, ["content"])]
    [(0, ['a', 'b', 'c'])]
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pajson
import pyarrow.parquet as pq

from ..errors import DataError
from .loading import DecodeReport, SourceSpec, check_utf8_file, decode_text, locate_json_error

DEFAULT_BATCH_BYTES = 32 * 2**20
"""Text per batch handed to the tokenizer: large enough for its thread pool, small enough to bound memory."""
JSON_BLOCK_BYTES = 4 * 2**20
SAMPLE_WINDOWS = 8
SAMPLE_WINDOW_BYTES = 2**20
SAMPLE_FILE_BYTES = 8192
"""2,000 characters of up to 4 bytes: what the guard checks of one text."""


@dataclass
class SourceBatch:
    """Consecutive source rows: ``table`` holds the strategy's columns (renamed), ``start`` the source row number
    (0-based, after ``max_rows``, before any split) of its first row."""

    table: pa.Table
    start: int
    source_bytes: int = 0
    """About the bytes of source read for this batch (its text's Arrow size): what progress bars count."""

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


def reads_directly(spec: SourceSpec, columns: Sequence[str], string_columns: bool) -> bool:
    """Whether :func:`read_batches` reads ``spec``: local JSON Lines, Parquet or a text folder, not streamed, and
    (for JSON Lines) columns that hold strings (chat lists keep ``load_dataset``'s type inference).

    Example:
        >>> reads_directly(SourceSpec(kind="text_dir", paths=["a.txt"], root="."), ["content"], True)
        True
    """
    if spec.streaming or not columns:
        return False
    if spec.kind == "text_dir":
        return True
    if spec.kind != "files":
        return False
    if any(p.endswith((".gz", ".zst", ".bz2", ".xz")) or "://" in p for p in spec.paths):
        return False
    return spec.format == "parquet" or (spec.format == "jsonl" and string_columns)


def _source_columns(spec: SourceSpec, columns: Sequence[str]) -> list[str]:
    """The source's names of ``columns`` (the spec renames ``source name -> new name``)."""
    back = {new: old for old, new in spec.columns.items()}
    return [back.get(c, c) for c in columns]


def _renamed(table: pa.Table, spec: SourceSpec) -> pa.Table:
    return table.rename_columns([spec.columns.get(c, c) for c in table.column_names]) if spec.columns else table


def read_batches(
    spec: SourceSpec, columns: Sequence[str], batch_bytes: int = DEFAULT_BATCH_BYTES
) -> Iterator[SourceBatch]:
    """The rows of ``spec`` (``columns`` only, renamed), in source order, in batches of about ``batch_bytes``.

    Raises :class:`~hfprep.errors.DataError` naming the file (and line) for a file that cannot be read, a missing
    column, and a source with zero rows. A ``text_dir`` read with ``decode_errors: replace`` records what it
    replaced in ``spec.replaced``.
    """
    wanted = _source_columns(spec, columns)
    if spec.kind == "text_dir":
        tables = _text_dir_tables(spec, wanted, batch_bytes)
    elif spec.format == "parquet":
        tables = _parquet_tables(spec.paths, wanted)
    else:
        tables = _jsonl_tables(spec.paths, wanted)
    start = 0  # source row number of the next batch
    left = spec.max_rows if spec.max_rows is not None else float("inf")
    pending: list[pa.Table] = []
    size = 0
    for table in tables:
        table = table.slice(0, int(min(left, table.num_rows)))
        left -= table.num_rows
        pending.append(table)
        size += table.nbytes
        if size >= batch_bytes or not left:
            batch = _renamed(pa.concat_tables(pending), spec)
            yield SourceBatch(batch, start, size)
            start += batch.num_rows
            pending, size = [], 0
        if not left:
            break
    if pending and sum(t.num_rows for t in pending):
        batch = _renamed(pa.concat_tables(pending), spec)
        yield SourceBatch(batch, start, size)
        start += batch.num_rows
    if start == 0:
        raise DataError(f"source {spec.describe()} has zero rows; check the files (nothing to prepare)")


def first_rows(spec: SourceSpec, columns: Sequence[str], n: int) -> list[dict[str, object]]:
    """The first ``n`` rows of ``spec`` (``columns`` only, renamed) as dicts, reading no more than needed.

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.jsonl")
        >>> _ = open(p, "w").write('{"text": "a"}\\n{"text": "b"}\\n')
        >>> first_rows(SourceSpec(kind="files", paths=[p], format="jsonl"), ["text"], 1)
        [{'text': 'a'}]
    """
    rows: list[dict[str, object]] = []
    for batch in read_batches(dataclasses.replace(spec, max_rows=min(n, spec.max_rows or n)), columns, 2**20):
        rows += batch.table.to_pylist()
    return rows[:n]


# ----------------------------------------------------------------------------------------------- JSON Lines


def _jsonl_tables(paths: Sequence[str], columns: list[str]) -> Iterator[pa.Table]:
    schema = pa.schema([(c, pa.string()) for c in columns])
    parse = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    read = pajson.ReadOptions(block_size=JSON_BLOCK_BYTES)
    for path in paths:
        try:
            if os.path.getsize(path) == 0:
                continue
            for batch in _json_record_batches(path, read, parse):
                for column in batch.columns:
                    # Arrow's JSON parser keeps bytes that are not UTF-8: refuse them here, naming the line.
                    column.validate(full=True)
                yield pa.Table.from_batches([batch], schema=schema)
        except pa.ArrowInvalid as e:
            if "utf8" in str(e).lower() or "utf-8" in str(e).lower():
                check_utf8_file(path)
            hit = locate_json_error(path, columns)
            raise DataError(hit[1] if hit else f"{path}: not valid JSON Lines ({e})") from None
        except OSError as e:
            raise DataError(f"source file {path}: cannot be read ({e.strerror or e}); check the path") from None


def _json_record_batches(path: str, read: pajson.ReadOptions, parse: pajson.ParseOptions) -> Iterator[pa.RecordBatch]:
    """Record batches of one JSON Lines file, about ``read.block_size`` bytes at a time.

    Streamed by ``pyarrow.json.open_json`` (pyarrow 20+; it overlaps reading and parsing). That reader fails on a
    line longer than its block ("straddling object"), and older pyarrow (pyproject allows 16) lacks it; there the
    file is cut at line ends and each block parsed on its own (a long line makes one block of its own), skipping the
    rows already given.
    """
    given = 0
    if hasattr(pajson, "open_json"):
        try:
            for batch in pajson.open_json(path, read_options=read, parse_options=parse):
                yield batch
                given += batch.num_rows
            return
        except pa.ArrowInvalid as e:
            if "straddl" not in str(e):
                raise
    for batch in _json_line_blocks(path, read, parse):
        if given >= batch.num_rows:
            given -= batch.num_rows
            continue
        yield batch.slice(given)
        given = 0


def _json_line_blocks(path: str, read: pajson.ReadOptions, parse: pajson.ParseOptions) -> Iterator[pa.RecordBatch]:
    with open(path, "rb") as f:
        while True:
            block = f.read(read.block_size)
            if not block:
                return
            if not block.endswith(b"\n"):
                block += f.readline()  # finish the line the block cut, so every block holds whole records
            options = pajson.ReadOptions(use_threads=read.use_threads, block_size=max(read.block_size, len(block)))
            yield from pajson.read_json(pa.BufferReader(block), read_options=options, parse_options=parse).to_batches()


# ----------------------------------------------------------------------------------------------- Parquet


def _parquet_tables(paths: Sequence[str], columns: list[str]) -> Iterator[pa.Table]:
    for path in paths:
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a truncated or non-Parquet file
            raise DataError(f"source file {path} cannot be read as Parquet: {e}; fix or remove it") from None
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise DataError(
                f"source file {path} has no column(s) {missing} (it has {pf.schema_arrow.names}); set source.columns "
                "or tokenize.text_column"
            )
        for g in range(pf.metadata.num_row_groups):
            yield pf.read_row_group(g, columns=columns)


# ----------------------------------------------------------------------------------------------- text folders


def _text_dir_tables(spec: SourceSpec, columns: list[str], batch_bytes: int) -> Iterator[pa.Table]:
    unknown = [c for c in columns if c not in ("text", "path")]
    if unknown:
        raise DataError(
            f"source.text_dir rows have columns ['text', 'path'], not {unknown}; set source.columns "
            "(e.g. {text: content}) or tokenize.text_column"
        )
    root = Path(spec.root or "/")
    replaced = DecodeReport()
    texts: list[str] = []
    names: list[str] = []
    size = 0
    for p in spec.paths:
        with open(p, "rb") as f:
            text, bad = decode_text(f.read(), p, spec.encoding, spec.decode_errors)
        if bad:
            replaced.sequences += bad
            replaced.files += 1
            replaced.first_file = replaced.first_file or Path(p).relative_to(root).as_posix()
        texts.append(text)
        names.append(Path(p).relative_to(root).as_posix())
        size += len(text)
        if size >= batch_bytes:
            yield _text_table(texts, names, columns)
            texts, names, size = [], [], 0
    if texts:
        yield _text_table(texts, names, columns)
    spec.replaced = replaced if replaced.sequences else None


def _text_table(texts: list[str], names: list[str], columns: list[str]) -> pa.Table:
    data = {"text": texts, "path": names}
    return pa.table({c: pa.array(data[c], pa.string()) for c in columns})


# ----------------------------------------------------------------------------------------------- samples


def window_rows(spec: SourceSpec, columns: Sequence[str]) -> dict[str, list[object]]:
    """A cheap, deterministic spread of rows, read before a run (the backend guard's sample): the rows of the JSON
    Lines that start in :data:`SAMPLE_WINDOWS` evenly spaced windows of the input (by bytes, across the files,
    1 MiB each), or the first :data:`SAMPLE_FILE_BYTES` of every file of a text folder. Lines that do not parse
    are skipped (the reader reports them). ``columns`` are the source's names.

    Example:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.jsonl")
        >>> _ = open(p, "w").write('{"text": "a"}\\n{"text": "b"}\\n')
        >>> window_rows(SourceSpec(kind="files", paths=[p], format="jsonl"), ["text"])
        {'text': ['a', 'b']}
    """
    parts: dict[str, list[object]] = {c: [] for c in columns}
    if spec.kind == "text_dir":
        for p in spec.paths if "text" in columns else ():
            with open(p, "rb") as f:
                parts["text"].append(f.read(SAMPLE_FILE_BYTES).decode(spec.encoding, errors="replace"))
        return parts
    sizes = [os.path.getsize(p) for p in spec.paths]
    total = sum(sizes)
    starts = sorted({total * w // SAMPLE_WINDOWS for w in range(SAMPLE_WINDOWS)}) if total else []
    for w, begin in enumerate(starts):
        end = min(begin + SAMPLE_WINDOW_BYTES, starts[w + 1] if w + 1 < len(starts) else total)
        i = 0
        while begin >= sizes[i]:  # the file the window starts in (it ends there too)
            begin, end = begin - sizes[i], end - sizes[i]
            i += 1
        with open(spec.paths[i], "rb") as f:
            f.seek(max(0, begin - 1))  # from the byte before the window: a line starting at ``begin`` is in it
            data = (b"" if begin else b"\n") + f.read(min(end, sizes[i]) - begin + 1 + SAMPLE_WINDOW_BYTES)
        for line in _lines_starting_in(data, end - begin, begin + len(data) - 1 >= sizes[i]):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                for c in columns:
                    parts[c].append(row.get(c))
    return parts


def _lines_starting_in(data: bytes, window: int, at_eof: bool) -> Iterator[bytes]:
    """The complete lines that start in a window of a file: ``data`` holds the byte before the window (a newline
    at the start of the file), the window's ``window`` bytes and what follows; ``at_eof``: ``data`` reaches the end
    of the file (its last line needs no newline).

    Example:
        >>> list(_lines_starting_in(b"b\\nc\\nd\\ne", 4, True))  # window: the 4 bytes after "b"; "e" starts after
        [b'c', b'd']
    """
    pos = data.find(b"\n") + 1
    while 0 < pos <= window:
        nl = data.find(b"\n", pos)
        if nl < 0:
            if at_eof and pos < len(data):
                yield data[pos:]
            return
        yield data[pos:nl]
        pos = nl + 1
