"""The Hub dataset-repo layout on disk, and atomic, deterministic writes into it.

A prepared dataset is a folder that ``load_dataset(folder)`` and the Hub both understand::

    README.md                              dataset card (YAML front matter: configs, dataset_info, hfprep keys)
    data/<split>-00000-of-00002.parquet    shards, 5-digit index and count (what push_to_hub writes)
    data/<split>-00001-of-00002.parquet
    images/*.png                           figures shown in the card
    recipe.yaml                            the recipe as run, with local paths made portable (re-runnable)

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

import concurrent.futures
import contextlib
import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..errors import HfprepError, OutputBusyError, OutputError, OutputExistsError
from ..interrupts import COMMITTED
from ..scratch import pid_alive
from ..version import __version__
from .shards import (  # noqa: F401  (re-exported: the layout's one place for shard names and writes)
    DATA_DIR,
    DEFAULT_MAX_SHARD_BYTES,
    DEFAULT_ROW_GROUP_ROWS,
    ShardWriter,
    parquet_options,
    shard_filename,
    shard_schema,
    write_split,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no inter-process lock, the rest still holds
    fcntl = None  # type: ignore[assignment]

CARD_NAME = "README.md"
SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")
"""A Hub-layout shard name ``<split>-XXXXX-of-YYYYY.parquet`` (the one pattern: validate, push and the KD readers)."""
IMAGES_DIR = "images"
TOKENIZER_DIR = "tokenizer"
"""A tokenizer bundled with the rows (trained by hfprep or copied from a local folder)."""
RECIPE_NAME = "recipe.yaml"
"""The recipe as run, bundled in every output folder (see :func:`hfprep.describe.portable_recipe`)."""
DEFAULT_CONFIG = "default"
"""The config ``load_dataset(repo)`` reads when no config name is given."""
MARKER_NAME = ".hfprep-output.json"
"""Written by hfprep into every output folder it publishes: the list of its files. ``--overwrite`` replaces only
folders with this marker (or an hfprep card) and nothing else in them. Hidden, so neither ``load_dataset`` nor a
push sees it."""
CARD_KEYS = frozenset({"hfprep", "hfprep_kd"})
DOCUMENTS_DIR = "documents"
"""The ``documents`` config's shards (tokenized, unpacked documents): ``documents/<split>-XXXXX-of-YYYYY.parquet``,
the layout ``push_to_hub`` gives a config of that name."""
LEGACY_ENTRIES = frozenset({CARD_NAME, DATA_DIR, DOCUMENTS_DIR, IMAGES_DIR, RECIPE_NAME, TOKENIZER_DIR, ".gitattributes"})


def split_glob(split: str, data_dir: str = DATA_DIR) -> str:
    """The ``configs`` data_files pattern of a split, as ``push_to_hub`` writes it."""
    return f"{data_dir}/{split}-*"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, hex (what ``sha256sum`` prints). Remembered while the file's inode, size and
    modification time stay the same: a run's card, ``recipe.yaml`` and source revision name the same local inputs,
    and each byte is hashed once (by :func:`hash_in_background`'s thread when it was asked first)."""
    key = _stat_key(path)
    with _hashing_lock:
        pending = _hashing.get(key)
    if pending is not None:
        digest = pending.result()
        with _hashing_lock:
            _hashing.pop(key, None)  # remembered by _file_sha256 from now on
        return digest
    return _file_sha256(*key)


def hash_in_background(paths: Iterable[str | os.PathLike]) -> None:
    """Start hashing ``paths`` on a thread of its own: a run's card names its local inputs by sha256 at the end,
    and their bytes are then hashed while the run reads and packs them (hashlib releases the GIL), not after.
    :func:`file_sha256` waits for a hash under way instead of starting another.

    Example:
        >>> import tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "a.txt")
        >>> _ = open(p, "w").write("hi")
        >>> hash_in_background([p])
        >>> file_sha256(p) == hashlib.sha256(b"hi").hexdigest()
        True
    """
    work = []
    with _hashing_lock:
        for p in paths:
            key = _stat_key(p)
            if key not in _hashing:
                _hashing[key] = future = concurrent.futures.Future()
                work.append((key, future))
    if not work:
        return

    def run() -> None:
        for key, future in work:
            try:
                future.set_result(_file_sha256(*key))
            except BaseException as e:  # the caller of file_sha256 raises it
                future.set_exception(e)

    threading.Thread(target=run, name="hfprep-sha256", daemon=True).start()


_hashing: dict[tuple[str, int, int, int], concurrent.futures.Future] = {}
_hashing_lock = threading.Lock()


def _stat_key(path: str | os.PathLike) -> tuple[str, int, int, int]:
    st = os.stat(path)
    return os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=1 << 16)
def _file_sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_sha256(paths: Iterable[str | os.PathLike], root: str | os.PathLike) -> str:
    """One sha256 for several files: of the lines ``sha256sum`` prints for them from ``root`` (``<sha256>  <path
    relative to root>``, in the order given). Identifies a local source or folder by content, wherever it lies;
    ``sha256sum FILES | sha256sum`` in ``root`` recomputes it.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = open(os.path.join(d, "a.txt"), "w").write("hi")
        >>> line = hashlib.sha256(b"hi").hexdigest() + "  a.txt\\n"
        >>> files_sha256([os.path.join(d, "a.txt")], d) == hashlib.sha256(line.encode()).hexdigest()
        True
    """
    lines = "".join(f"{file_sha256(p)}  {Path(os.path.relpath(p, root)).as_posix()}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None


def _card_is_hfprep(folder: Path) -> bool:
    """A dataset card hfprep wrote (its YAML front matter has an ``hfprep`` or ``hfprep_kd`` block)."""
    try:
        text = (folder / CARD_NAME).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if not text.startswith("---"):
        return False
    end = text.find("\n---", 3)
    if end < 0:
        return False

    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return False
    return isinstance(meta, dict) and bool(CARD_KEYS & set(meta))


def _files_under(folder: Path) -> list[str]:
    """Relative paths of everything below ``folder`` that is not a directory (symlinks included), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        dirnames[:] = [d for d in dirnames if d not in links]
        out += [(rel / n).as_posix() for n in (*filenames, *links)]
    return sorted(out)


def foreign_files(folder: str | os.PathLike) -> list[str] | None:
    """What in ``folder`` hfprep did not write: None when it is not an hfprep output folder at all, else the list
    of relative paths that the folder's marker (or, for a folder without one, the standard layout) does not name.

    Example:
        >>> import tempfile, pyarrow as pa, os
        >>> out = os.path.join(tempfile.mkdtemp(), "ds")
        >>> with atomic_output(out) as tmp:
        ...     _ = write_split(pa.table({"x": [1]}), tmp, "train")
        >>> foreign_files(out)
        []
        >>> _ = open(os.path.join(out, "notes.txt"), "w").write("mine")
        >>> foreign_files(out)
        ['notes.txt']
    """
    folder = Path(folder)
    marker = _read_marker(folder)
    if marker is not None:
        known = set(marker["files"]) | {MARKER_NAME}
        return [f for f in _files_under(folder) if f not in known]
    if _card_is_hfprep(folder):
        # Written by hfprep before it left a marker, or downloaded from the Hub: only the standard layout counts.
        return sorted(n for n in os.listdir(folder) if n not in LEGACY_ENTRIES)
    return None


def check_output(
    path: str | os.PathLike, overwrite: bool = False, protect: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Refuse, in one line, an output path hfprep must not write; returns the absolute path.

    Refused always, each with its own reason (``overwrite`` would not help): a parent path that is a file, an output
    path that is a file or a symbolic link, the current folder or one above it, a folder that holds any of
    ``protect`` (the run's recipe, sources, tokenizer...), a folder hfprep did not write (no marker, no hfprep card)
    and one holding files hfprep did not write. Refused without ``overwrite``: hfprep's own existing output.

    Example:
        >>> import tempfile
        >>> check_output(tempfile.mkdtemp(), overwrite=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        hfprep.errors.OutputExistsError: ... exists and was not written by hfprep (it is empty); hfprep never ...
    """
    final = Path(path).absolute()
    shown = str(path)
    for anc in final.parents:
        if anc.exists() or anc.is_symlink():
            if not anc.is_dir():
                raise OutputError(
                    f"cannot write output {shown!r}: {str(anc)!r} is a file, not a folder; pick another output"
                )
            break
    if final.is_symlink():
        raise OutputExistsError(
            f"output {shown!r} is a symbolic link; hfprep does not replace links: give the folder it points to, or "
            "pick another output"
        )
    if not final.exists():
        return final
    if not final.is_dir():
        raise OutputExistsError(
            f"output {shown!r} is a file, not a folder; hfprep never replaces it (not even with --overwrite): "
            "pick another output"
        )
    real = final.resolve()
    never = "hfprep never replaces it (not even with --overwrite): choose another output.folder"
    if _inside(Path.cwd().resolve(), real):
        raise OutputExistsError(f"output {shown!r} is the current folder or holds it; {never}")
    for p in protect:
        if p is not None and _inside(Path(p).absolute().resolve(), real):
            raise OutputExistsError(
                f"output {shown!r} holds {str(p)!r}, an input of this run (recipe, source or tokenizer); {never}"
            )
    foreign = foreign_files(final)
    if foreign is None:
        raise OutputExistsError(
            f"{shown} exists and was not written by hfprep ({_first_entries(final)}); hfprep never deletes it: "
            "remove it yourself or choose another output.folder"
        )
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputExistsError(
            f"output folder {shown!r} holds {foreign[0]!r}{more}, which hfprep did not write; hfprep never deletes "
            "it (not even with --overwrite): move it out or choose another output.folder"
        )
    if not overwrite:
        raise OutputExistsError(f"output folder {shown!r} already exists; pass --overwrite (or pick another output)")
    return final


def _first_entries(folder: Path, n: int = 3) -> str:
    """``it holds 'a', 'b/c' and more`` / ``it is empty``: the first files of ``folder`` in walk order, without
    walking all of a big tree."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = Path(dirpath).relative_to(folder)
        found += [(rel / name).as_posix() for name in sorted(filenames)]
        if len(found) > n:
            break
    if not found:
        return "it holds only empty folders" if os.listdir(folder) else "it is empty"
    shown = ", ".join(repr(f) for f in found[:n])
    return f"it holds {shown}" + (" and more" if len(found) > n else "")


# --- locking: one writer per output --------------------------------------------------------------------------

_HELD_LOCKS: dict[Path, list[int]] = {}  # output path -> [lock fd, depth]


def _staging_pid(name: str, final: Path) -> int | None:
    """The pid in the name of a staging sibling ``.<name>.tmp-<pid>-<hex>`` / ``.<name>.old-<pid>-<hex>``."""
    for kind in ("tmp", "old"):
        head = f".{final.name}.{kind}-"
        if name.startswith(head):
            pid = name[len(head) :].split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def _sweep_stale_staging(final: Path) -> None:
    """Remove the staging folders of killed runs for this output (a kill -9 runs no cleanup)."""
    try:
        names = os.listdir(final.parent)
    except OSError:
        return
    for name in names:
        pid = _staging_pid(name, final)
        if pid is not None and pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(final.parent / name, ignore_errors=True)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the output's lock (``.<name>.lock`` next to it) so that only one hfprep process writes it at a time.

    Re-entrant within a process. A second process gets a one-line :class:`~hfprep.errors.OutputBusyError` at once.
    The lock dies with its process (a kill -9 too); the next writer of the output removes a dead run's leftovers.

    Example:
        >>> import tempfile, os
        >>> out = os.path.join(tempfile.mkdtemp(), "ds")
        >>> with output_lock(out):
        ...     os.path.exists(os.path.join(os.path.dirname(out), ".ds.lock"))
        True
    """
    final = Path(path).absolute()
    held = _HELD_LOCKS.get(final)
    if held is not None:
        held[1] += 1
        try:
            yield final
        finally:
            held[1] -= 1
        return
    # The lock and the staging folder live next to the output: its parent folders must exist while the run does. Those
    # this run makes go again when it ends without an output in them (an error, Ctrl-C): a failed run leaves nothing.
    created: list[Path] = []
    try:
        fd = _take_lock(final, str(path), created)
        _HELD_LOCKS[final] = [fd, 1]
        try:
            _sweep_stale_staging(final)
            yield final
        finally:
            del _HELD_LOCKS[final]
            with contextlib.suppress(OSError):
                os.unlink(_lock_path(final))
            os.close(fd)
    finally:
        _remove_empty_folders(created)


def _lock_path(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


def _take_lock(final: Path, shown: str, created: list[Path]) -> int:
    """Open and lock the output's lock file (making the missing parent folders, appended to ``created``)."""
    lock = _lock_path(final)
    while True:
        with output_errors(shown):
            created += make_folders(final.parent)
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # another run that made the parent removed it just now: make it again
                continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusyError(
                f"output {shown!r} is being written by another hfprep process (pid {owner}); wait for it to "
                "finish or pick another output"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def make_folders(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns the folders made here, outermost first (one made by another
    process at the same moment is not ours).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> [p.relative_to(root).as_posix() for p in make_folders(root / "a" / "b")]
        ['a', 'a/b']
        >>> make_folders(root / "a")
        []
    """
    missing = []
    p = folder
    while not (p.exists() or p.is_symlink()):
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        made.append(d)
    return made


def _remove_empty_folders(made: list[Path]) -> None:
    """Remove the folders of :func:`make_folders`, innermost first, as long as they are empty (never a file in them)."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def claim_output(
    path: str | os.PathLike, overwrite: bool = False, protect: Iterable[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """:func:`check_output` up front, then hold :func:`output_lock` for the whole run (checks again under it).

    Example:
        >>> import tempfile, os
        >>> with claim_output(os.path.join(tempfile.mkdtemp(), "ds")) as final:
        ...     final.name
        'ds'
    """
    check_output(path, overwrite, protect)
    with output_lock(path):
        yield check_output(path, overwrite, protect)


@contextlib.contextmanager
def output_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an OS error while writing the output (disk full, read-only, permission...) into a one-line
    :class:`~hfprep.errors.OutputError` naming the output."""
    try:
        yield
    except HfprepError:
        raise
    except OSError as e:
        raise OutputError(
            f"could not write output {str(path)!r}: {_first_line(e)}; nothing was written (free space or pick "
            "another output, then re-run)"
        ) from e


def _write_marker(folder: Path) -> None:
    files = [f for f in _files_under(folder) if f != MARKER_NAME]
    body = {"written_by": "hfprep", "hfprep_version": __version__, "files": files}
    (folder / MARKER_NAME).write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C (and SIGTERM) back for a few renames, so an interrupt cannot fall between them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike, overwrite: bool = False, protect: Iterable[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename, on error it is removed.

    The path is checked by :func:`check_output` (``protect``: inputs of the run that must not be inside it) and
    locked by :func:`output_lock` while writing. The finished folder gets hfprep's marker file (the list of the
    files it holds), which is what lets a later ``overwrite`` replace it. Errors writing it (disk full...) are
    one-line :class:`~hfprep.errors.OutputError`; the previous output, if any, is left as it was.
    """
    protect = list(protect)
    check_output(path, overwrite, protect)
    with output_lock(path):
        final = check_output(path, overwrite, protect)  # again, under the lock
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with output_errors(path):
            tmp.mkdir()
        old: Path | None = None
        try:
            with output_errors(path):
                yield tmp
                _write_marker(tmp)
            check_output(path, overwrite, protect)  # someone may have put something there meanwhile
            with output_errors(path), _signals_deferred():
                if not final.exists():
                    os.rename(tmp, final)
                elif not _rename_exchange(tmp, final):
                    old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    os.rename(final, old)
                    try:
                        os.rename(tmp, final)
                    except OSError:
                        os.rename(old, final)
                        old = None
                        raise
            # After the exchange ``tmp`` holds the previous output; after the two renames ``old`` does.
        except BaseException:  # Ctrl-C included: never leave the temp folder behind
            shutil.rmtree(tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            raise
        COMMITTED.append(Path(path))  # a Ctrl-C from now on finds a complete output: the CLI says so
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def hf_schema(table: pa.Table, features=None) -> pa.Schema:
    """Schema with datasets' ``huggingface`` metadata, so ``load_dataset`` restores the exact features."""
    return shard_schema(table.schema, features)


def write_parquet(
    table: pa.Table,
    path: str | os.PathLike,
    features=None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> None:
    """Write one Parquet file with the output's settings (:func:`hfprep.output.shards.parquet_options`):
    same table -> same bytes. Splits are written with :func:`write_split`."""
    table = table.replace_schema_metadata(None).cast(hf_schema(table, features))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(path), row_group_size=row_group_rows, **parquet_options(table.schema))


def list_split_files(folder: str | os.PathLike) -> dict[str, list[str]]:
    """``{split: [relative shard paths]}`` found under ``folder/data`` (sorted)."""
    out: dict[str, list[str]] = {}
    data = Path(folder) / DATA_DIR
    for p in sorted(data.glob("*-*-of-*.parquet")):
        split = p.name.rsplit("-", 3)[0]
        out.setdefault(split, []).append(f"{DATA_DIR}/{p.name}")
    return out
