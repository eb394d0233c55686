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
    >>> list(load_source(spec)["content"])
    ['a', 'b', 'c']
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import glob as globlib
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import datasets.config
import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, IterableDataset, Value, load_dataset
from huggingface_hub import constants

from .. import scratch
from ..errors import DataError, HubError

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
    decode_errors: Literal["strict", "replace"] = "strict"
    streaming: bool = False
    max_rows: int | None = None
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    heldout_fraction: float = 0.0
    split_columns: list[str] = dataclasses.field(default_factory=list)
    keep: Literal["all", "train", "heldout"] = "all"
    keep_cache: bool = False
    """Convert local files into ``datasets``' own cache (``engine.reuse_tokenized``), not the run's scratch."""
    # Filled by check_source_text: undecodable byte sequences replaced by U+FFFD (decode_errors: replace).
    replaced: DecodeReport | None = None

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
            "set source.columns or tokenize.text_column so the strategy's input columns exist"
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
        "decode_errors": getattr(section, "decode_errors", "strict"),
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


@dataclasses.dataclass
class DecodeReport:
    """Undecodable byte sequences that ``source.decode_errors: replace`` turned into U+FFFD."""

    sequences: int = 0
    files: int = 0
    first_file: str | None = None

    def describe(self) -> str:
        """One line for the summary and the card."""
        return (
            f"{self.sequences:,} undecodable byte sequence(s) in {self.files:,} file(s) replaced by U+FFFD "
            f"(source.decode_errors: replace; first: {self.first_file})"
        )


_COUNTING_REPLACE = "hfprep-counting-replace"
_replacements = [0]


def _counting_replace(exc: UnicodeError) -> tuple[str, int]:
    """What ``errors="replace"`` does when decoding (one U+FFFD per bad sequence), counted."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _replacements[0] += 1
    return "\ufffd", exc.end


codecs.register_error(_COUNTING_REPLACE, _counting_replace)


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def decode_error_message(path: str, data: bytes, exc: UnicodeDecodeError, encoding: str, fix: str) -> str:
    """``file: line L, column C: byte 0x.. is not valid <encoding>; <fix>`` (one line)."""
    line, col = _line_and_column(data, exc.start)
    bad = data[exc.start : min(exc.end, exc.start + 4)].hex(" ")
    return f"{path}: line {line}, column {col}: byte(s) {bad} are not valid {encoding} ({exc.reason}); {fix}"


def decode_text(
    data: bytes, path: str, encoding: str = "utf-8", errors: Literal["strict", "replace"] = "replace"
) -> tuple[str, int]:
    """A file's bytes as text, and how many undecodable byte sequences were replaced by U+FFFD.

    ``errors="replace"`` turns each undecodable sequence into one U+FFFD (deterministic, counted); ``"strict"``
    raises a one-line :class:`~hfprep.errors.DataError` naming ``path``, the line and the column.

    Example:
        >>> decode_text(b"ok \\xff", "a.txt")
        ('ok \ufffd', 1)
    """
    try:
        return data.decode(encoding), 0
    except UnicodeDecodeError as e:
        if errors == "strict":
            raise DataError(
                decode_error_message(path, data, e, encoding, "fix or re-encode the file, set source.encoding, or "
                                     "set source.decode_errors: replace to replace such bytes by U+FFFD (they are "
                                     "counted)")
            ) from None
    _replacements[0] = 0
    text = data.decode(encoding, errors=_COUNTING_REPLACE)
    return text, _replacements[0]


def read_text_file(path: str, encoding: str = "utf-8", errors: Literal["strict", "replace"] = "replace") -> str:
    """A whole file as text (the file's characters, line ends untouched); see :func:`decode_text` for ``errors``."""
    with open(path, "rb") as f:
        return decode_text(f.read(), path, encoding, errors)[0]


def _count_replacements(path: str, encoding: str) -> int:
    with open(path, "rb") as f:
        return decode_text(f.read(), path, encoding, "replace")[1]


def check_source_text(spec: SourceSpec) -> DecodeReport | None:
    """Decode every text source file up front, so bad bytes are one clear error before any work starts.

    ``text_dir`` follows ``source.decode_errors`` (``strict``: refuse naming the file, line and column;
    ``replace``: count the replaced sequences into ``spec.replaced``). Local jsonl/json/csv/text files must be
    valid UTF-8 (datasets reads them as such; invalid bytes would otherwise fail deep inside a later stage).
    Compressed files are checked by the reader itself.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); _ = open(os.path.join(d, "a.txt"), "wb").write(b"ok \\xff")
        >>> spec = SourceSpec(kind="text_dir", paths=[os.path.join(d, "a.txt")], root=d, decode_errors="replace")
        >>> check_source_text(spec).sequences
        1
    """
    if spec.kind == "text_dir":
        if spec.decode_errors == "strict":
            for p in spec.paths:
                read_text_file(p, spec.encoding, "strict")
            return None
        report = DecodeReport()
        for p in spec.paths:
            n = _count_replacements(p, spec.encoding)
            if n:
                report.sequences += n
                report.files += 1
                report.first_file = report.first_file or Path(p).relative_to(spec.root or "/").as_posix()
        spec.replaced = report if report.sequences else None
        return spec.replaced
    if spec.kind == "files" and spec.format in ("jsonl", "json", "csv", "text"):
        for p in spec.paths:
            if not p.endswith((".gz", ".zst", ".bz2", ".xz")):
                check_utf8_file(p)
    return None


def check_utf8_file(path: str, chunk: int = 1 << 24) -> None:
    """Refuse a file that is not valid UTF-8 with one line naming the file, line and column."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    read = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk)
            read += len(data)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError:
                # Rare path: decode the head of the file again in one piece for the exact line and column.
                f.seek(0)
                head = f.read(read)
                try:
                    head.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        decode_error_message(path, head, e, "UTF-8", "re-encode the file as UTF-8 "
                                             "(e.g. iconv -f latin1 -t utf-8) or fix that line")
                    ) from None
                raise  # pragma: no cover - the head holds the error the decoder saw
            if not data:
                return


def _text_dir_rows(
    paths: list[str], root: str, encoding: str, stamps: list[str], errors: str = "replace"
) -> Iterator[dict[str, str]]:
    # ``stamps`` (size + mtime) only feeds datasets' cache fingerprint, so an edited file is re-read.
    del stamps
    for p in paths:
        yield {"text": read_text_file(p, encoding, errors), "path": Path(p).relative_to(root).as_posix()}  # type: ignore[arg-type]


def text_dir_generator_kwargs(spec: SourceSpec) -> dict[str, Any]:
    stamps = [f"{os.stat(p).st_size}:{os.stat(p).st_mtime_ns}" for p in spec.paths]
    return {"paths": spec.paths, "root": spec.root, "encoding": spec.encoding, "stamps": stamps,
            "errors": spec.decode_errors}


def conversion_cache_dir() -> str | None:
    """Where datasets converts a local source to Arrow: inside ``hfprep run`` (:func:`hfprep.scratch.run_scope`) a
    scratch folder of the run in datasets' cache folder (same disk; removed when the run ends, however it ends, with
    every file datasets derives next to the conversion: split filters, map outputs, a killed worker's temporary
    file); outside a run None, datasets' own cache.

    Example:
        >>> from hfprep.scratch import run_scope
        >>> with run_scope():
        ...     os.path.basename(conversion_cache_dir()).startswith("hfprep-source-")
        True
        >>> conversion_cache_dir() is None
        True
    """
    folder = scratch.run_dir("source", datasets.config.HF_DATASETS_CACHE)
    return None if folder is None else str(folder)


def _load_raw(spec: SourceSpec):
    # engine.reuse_tokenized keeps the conversion (and what is derived from it) in datasets' own cache, for later runs.
    cache_dir = None if spec.streaming or spec.keep_cache else conversion_cache_dir()
    if spec.kind == "text_dir":
        feats = Features({"text": Value("string"), "path": Value("string")})
        kwargs = text_dir_generator_kwargs(spec)
        if spec.streaming:
            return IterableDataset.from_generator(_text_dir_rows, features=feats, gen_kwargs=kwargs)
        return Dataset.from_generator(_text_dir_rows, features=feats, gen_kwargs=kwargs, cache_dir=cache_dir)
    if spec.kind == "files":
        if not _files_have_rows(spec):
            raise DataError(f"source {spec.describe()} has zero rows; check the files (nothing to prepare)")
        try:
            with _json_builder_quiet():
                return load_dataset(
                    BUILDER[spec.format], data_files=spec.paths, split="train", streaming=spec.streaming,
                    cache_dir=cache_dir,
                )
        except Exception as e:  # datasets raises many types for unreadable files
            if "corresponds to no data" in str(e):  # every file is empty
                raise DataError(f"source {spec.describe()} has zero rows; check the files (nothing to prepare)") from e
            if spec.format in ("jsonl", "json"):
                # datasets knows only "row N" of a block of one file: name the file and its line instead.
                located = next((hit for p in spec.paths if (hit := locate_json_error(p)) is not None), None)
                if located is not None:
                    raise DataError(located[1]) from e
            raise DataError(
                f"could not read source files as {spec.format} ({spec.paths[0]!r}...): {_first_line(e.__cause__ or e)}; "
                "check source.format and the files"
            ) from e
    require_hub(f"source.hub {spec.hub_id!r}", "use a local source (source.files / source.text_dir)")
    try:
        return load_dataset(
            spec.hub_id, name=spec.config_name, split=spec.split, revision=spec.revision, streaming=spec.streaming
        )
    except Exception as e:
        raise HubError(
            f"could not load Hub dataset {spec.hub_id!r} (config {spec.config_name!r}, split {spec.split!r}): "
            f"{_first_line(e)}; check the id/config/split, your network and HF_TOKEN"
        ) from e


JSON_LINE_FIX = "fix or remove that line"
NOT_JSON_LINES_FIX = (
    "the file is neither JSON Lines (one object per line) nor one JSON document: fix it or set source.format"
)


def json_error_message(path: str, line: int, problem: str, fix: str = JSON_LINE_FIX) -> str:
    """The one-line error for a line of a JSON Lines file that a reader rejects, as every reader words it:
    ``<file>: line <n>: <problem>; <fix>`` (the problem: ``not valid JSON (<reason>)``, ``not a JSON object ...``).

    Example:
        >>> json_error_message("docs.jsonl", 7, "not valid JSON (Unterminated string starting at column 9)")
        'docs.jsonl: line 7: not valid JSON (Unterminated string starting at column 9); fix or remove that line'
    """
    return f"{path}: line {line}: {problem}; {fix}"


def _json_reason(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg.removesuffix(' at')} at column {err.colno}"
    return " ".join(str(err).split()) or type(err).__name__  # a UnicodeDecodeError


def locate_json_error(path: str, string_columns: Sequence[str] = ()) -> tuple[int, str] | None:
    """The first line of a JSON Lines file that a reader rejects, as ``(line number, one-line message)`` (see
    :func:`json_error_message`): a line that is not JSON, not an object, or whose ``string_columns`` value is neither
    a string nor null. None when every line reads (the reader failed for another reason).

    Meant for after a reader failed: one pass in Python, stopping at the bad line. Compressed files are read through
    their codec. A file whose first line does not parse may be one JSON document spread over lines (which datasets
    also reads): then the position its parser reports is named.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.jsonl")
        >>> _ = open(p, "w").write('{"text": "a"}\\n\\n{"text": "b}\\n')
        >>> locate_json_error(p)[0]
        3
    """
    with fsspec.open(path, "rb", compression="infer") as f:
        seen_object = False
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.rstrip(b"\r\n"))
            except ValueError as e:
                if not seen_object:
                    return _locate_in_document(path, f, lineno, raw, e)
                return lineno, json_error_message(path, lineno, f"not valid JSON ({_json_reason(e)})")
            if not isinstance(row, dict):
                kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(row), "a number")
                if row is None:
                    kind = "null"
                return lineno, json_error_message(path, lineno, f"not a JSON object ({kind}; one object per line)")
            seen_object = True
            for c in string_columns:
                v = row.get(c)
                if v is not None and not isinstance(v, str):
                    return lineno, json_error_message(path, lineno, f"column {c!r} holds a {type(v).__name__}, not a string")
    return None


def _locate_in_document(path: str, f, lineno: int, line: bytes, line_error: ValueError) -> tuple[int, str] | None:
    """The first line does not parse alone. JSON Lines when it opens an object and the next line is one (the first
    line is the bad one); else maybe one JSON document spread over lines: None when it parses, else where its
    parser stopped."""
    following = next((raw for raw in f if raw.strip()), None)
    try:
        jsonl = line.lstrip().startswith(b"{") and following is not None and isinstance(json.loads(following), dict)
    except ValueError:
        jsonl = False
    if jsonl:
        return lineno, json_error_message(path, lineno, f"not valid JSON ({_json_reason(line_error)})")
    f.seek(0)
    try:
        json.loads(f.read())
    except json.JSONDecodeError as e:
        return e.lineno, json_error_message(path, e.lineno, f"not valid JSON ({_json_reason(e)})", NOT_JSON_LINES_FIX)
    except ValueError:
        reason = _json_reason(line_error)
        return lineno, json_error_message(path, lineno, f"not valid JSON ({reason})", NOT_JSON_LINES_FIX)
    return None


@contextlib.contextmanager
def _json_builder_quiet() -> Iterator[None]:
    """Keep datasets' JSON builder from logging its own error line for a file it cannot parse (hfprep says it)."""
    log = logging.getLogger("datasets.packaged_modules.json.json")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def check_parquet_files(spec: SourceSpec) -> None:
    """What :func:`load_source` checks before reading Parquet files, for an engine that reads their row groups
    itself: every file readable (a one-line error naming it) and at least one row in all.

    Example:
        >>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "empty.parquet")
        >>> pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
        >>> check_parquet_files(SourceSpec(kind="files", paths=[path], format="parquet"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hfprep.errors.DataError: source ... has zero rows; check the files (nothing to prepare)
    """
    rows = 0
    for p in spec.paths:
        try:
            rows += pq.read_metadata(p).num_rows
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a truncated or non-Parquet file
            raise DataError(f"source file {p} cannot be read as Parquet: {_first_line(e)}; fix or remove it") from e
    if not rows:
        raise DataError(f"source {spec.describe()} has zero rows; check the files (nothing to prepare)")


def _files_have_rows(spec: SourceSpec) -> bool:
    """Cheap up-front check so an empty source is one clear error, not a datasets builder failure."""
    if spec.format == "parquet":
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

    Raises :class:`~hfprep.errors.DataError` when the source has zero rows (non-streaming), a file is
    unreadable or holds bytes that do not decode (see :func:`check_source_text`), and :class:`~hfprep.errors.HubError` when a Hub dataset cannot be loaded.
    """
    check_source_text(spec)
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


def select_split(ds, spec: SourceSpec, num_proc: int | None = None, name: str | None = None):
    """Keep one side of the held-out rule (``spec.keep``); a no-op for ``all``. ``name``: the split's name as the
    user knows it (``test``), shown in the progress bar instead of the rule's side (``heldout``)."""
    if spec.keep == "all" or spec.heldout_fraction <= 0:
        return ds if spec.keep != "heldout" else ds.select([])
    cols, frac, want = spec.split_columns, spec.heldout_fraction, spec.keep == "heldout"

    def keep(batch: dict[str, list[Any]]) -> list[bool]:
        m = heldout_mask(batch, cols, frac)
        return (m if want else ~m).tolist()

    if spec.streaming:
        return ds.filter(keep, batched=True)
    return ds.filter(keep, batched=True, num_proc=num_proc, desc=f"split {name or spec.keep}")


# ----------------------------------------------------------------------------------------------- locating rows

_ROW_PREFIX = re.compile(r"^row (\d+)\b")


def source_row(spec: SourceSpec, index: int, source_ds) -> int | None:
    """The source row (counted after ``max_rows``, before the held-out split) of row ``index`` of ``spec.keep``.

    Recomputes the held-out rule over ``source_ds`` (the loaded source), so it costs one pass over the split
    columns; it is meant for error messages.
    """
    if spec.keep == "all" or spec.heldout_fraction <= 0:
        return index
    if source_ds is None:
        return None
    want_heldout = spec.keep == "heldout"
    seen = start = 0
    for batch in source_ds.select_columns(spec.split_columns).iter(batch_size=8192):
        mask = heldout_mask(batch, spec.split_columns, spec.heldout_fraction)
        hits = np.flatnonzero(mask if want_heldout else ~mask)
        if index < seen + len(hits):
            return start + int(hits[index - seen])
        seen += len(hits)
        start += len(mask)
    return None


def _rows_per_file(spec: SourceSpec) -> list[int] | None:
    counts = []
    for p in spec.paths:
        if p.endswith((".gz", ".zst", ".bz2", ".xz")):
            return None
        if spec.format == "parquet":
            counts.append(pq.read_metadata(p).num_rows)
        elif spec.format == "jsonl":
            with open(p, "rb") as f:
                counts.append(sum(1 for line in f if line.strip()))
        elif spec.format == "text":
            with open(p, "rb") as f:
                data = f.read()
            counts.append(data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0))
        elif len(spec.paths) == 1:
            counts.append(2**63)  # one file: the source row is the file's row
        else:
            return None
    return counts


def describe_source_row(spec: SourceSpec, row: int) -> str:
    """Where source row ``row`` (0-based, in source order) lives: ``file line N`` (jsonl, text), ``file row N``
    (Parquet and others, 0-based), the file itself (``text_dir``) or the Hub split's row.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.jsonl")
        >>> _ = open(p, "w").write('{"t": 1}\\n\\n{"t": 2}\\n')
        >>> describe_source_row(SourceSpec(kind="files", paths=[p], format="jsonl"), 1).endswith("a.jsonl line 3")
        True
    """
    if spec.kind == "text_dir":
        return f"file {spec.paths[row]}" if row < len(spec.paths) else f"source row {row}"
    if spec.kind == "hub":
        return f"row {row} of Hub dataset {spec.hub_id!r} split {spec.split!r}"
    counts = _rows_per_file(spec)
    if counts is None:
        return f"source row {row} of {spec.describe()}"
    k, i = row, 0
    while i < len(counts) and k >= counts[i]:
        k -= counts[i]
        i += 1
    if i == len(counts):
        return f"source row {row} of {spec.describe()}"
    p = spec.paths[i]
    if spec.format == "jsonl":
        with open(p, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    if k == 0:
                        return f"{p} line {lineno}"
                    k -= 1
    if spec.format == "text":
        return f"{p} line {k + 1}"
    return f"{p} row {k}"


def locate_row_error(err: DataError, spec: SourceSpec, source_ds) -> DataError:
    """``err`` with its leading ``row N`` (a row of one split) replaced by where that row is in the source files.

    Errors without a leading row number are returned unchanged.
    """
    msg = str(err)
    m = _ROW_PREFIX.match(msg)
    if not m:
        return err
    index = int(m.group(1))
    try:
        row = source_row(spec, index, source_ds)
        where = f"row {index}" if row is None else f"{describe_source_row(spec, row)} (source row {row})"
    except Exception:  # locating is best effort: never hide the original error
        return err
    split = "" if spec.keep == "all" else f", row {index} of the {spec.keep} split"
    new = type(err)(f"{where}{split}{msg[m.end():]}")
    new.__cause__ = err.__cause__
    return new


# ----------------------------------------------------------------------------------------------- Hub access

_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_offline() -> bool:
    """True when an offline variable is set (the libraries then read only their local caches)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in _OFFLINE_VARS)


def require_hub(what: str, local: str, timeout: float = 3.0) -> None:
    """Fail in seconds, in one line, when ``what`` (a Hub dataset or tokenizer) needs a Hub that cannot be reached;
    ``local`` says what to use instead (``"use a local source (source.files / source.text_dir)"``).

    Without this the Hub clients retry for tens of seconds and print a line per retry. Offline mode (any of
    ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``TRANSFORMERS_OFFLINE``) is left to the libraries, which then
    read their caches; behind a proxy the probe is skipped (a direct connection proves nothing there).

    Example:
        >>> require_hub("source.hub 'user/name'", "use a local source")  # doctest: +SKIP
    """
    if hub_offline() or any(os.environ.get(v) for v in _PROXY_VARS):
        return

    endpoint = constants.ENDPOINT.rstrip("/")
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as e:
        reason = e.strerror or type(e).__name__
    raise HubError(
        f"{what} needs the Hub, but {endpoint} cannot be reached ({reason}); check the network or HF_ENDPOINT, "
        f"set HF_HUB_OFFLINE=1 to use a cached copy, or {local}"
    )
