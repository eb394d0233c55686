"""Scratch folders: every temporary folder hfprep makes, and the guarantee that none outlives its run.

A scratch folder is named ``hfprep-<kind>-<pid>-<random>`` and holds a ``.lock`` file that its process keeps
locked (``flock``) while it lives. It is removed by whoever made it: at the end of the current :func:`run_scope`
(what ``hfprep run`` opens around a whole run: success, error and Ctrl-C alike), or by the function that made it
when no run scope is open. A process killed with ``kill -9`` runs no cleanup: its folders keep their name but lose
their lock, and the next :class:`ScratchDir` made in the same parent folder removes them. datasets' own cache files
(``cache-*.arrow``) are not scratch: datasets manages them.

Example:
    >>> with run_scope():
    ...     work = ScratchDir("demo")
    ...     (work.path / "part.arrow").write_bytes(b"...") and adopt(work)
    True
    >>> work.path.exists()
    False
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: leftovers of killed runs are then only found by pid
    fcntl = None  # type: ignore[assignment]

PREFIX = "hfprep-"
LOCK_NAME = ".lock"
_NAME = re.compile(r"^hfprep-([a-z]+)-(\d+)-[A-Za-z0-9_]+$")
_SCOPES: list[list[ScratchDir]] = []
_LIVE: set[ScratchDir] = set()


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(folder: Path, pid: int) -> bool:
    """True when no live process owns ``folder``: its lock can be taken (or, without a lock file, its pid is gone)."""
    lock = folder / LOCK_NAME
    if fcntl is not None:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            pass  # being created (lock not yet written) or made by a killed run before it locked: ask the pid
        except OSError:
            return False
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            finally:
                os.close(fd)
            return True
    return pid != os.getpid() and not pid_alive(pid)


def sweep_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove the scratch folders of dead hfprep processes found directly in ``parent``; returns what was removed.

    Example:
        >>> import tempfile
        >>> sweep_stale(tempfile.mkdtemp())
        []
    """
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        m = _NAME.match(name)
        if m is None:
            continue
        folder = Path(parent) / name
        if folder.is_dir() and not folder.is_symlink() and _is_stale(folder, int(m.group(2))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class ScratchDir:
    """A new scratch folder ``<parent>/hfprep-<kind>-<pid>-<random>``, locked by this process until :meth:`cleanup`.

    ``parent`` defaults to the temp folder (``TMPDIR``). Making one first removes the dead runs' scratch folders
    found in ``parent``.

    Example:
        >>> work = ScratchDir("demo")
        >>> work.path.name.startswith(f"hfprep-demo-{os.getpid()}-")
        True
        >>> work.cleanup(); work.path.exists()
        False
    """

    def __init__(self, kind: str, parent: str | os.PathLike | None = None) -> None:
        if not re.fullmatch(r"[a-z]+", kind):
            raise ValueError(f"scratch kind must be lowercase letters, got {kind!r}")
        self.kind = kind
        parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(parent)
        self._pid = os.getpid()
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-{os.getpid()}-", dir=parent))
        self._fd: int | None = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        _LIVE.add(self)

    def cleanup(self) -> None:
        """Remove the folder (idempotent; a no-op in a forked child, which does not own it)."""
        if os.getpid() != self._pid:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        _LIVE.discard(self)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"ScratchDir({str(self.path)!r})"


@contextlib.contextmanager
def run_scope() -> Iterator[None]:
    """Every scratch folder :func:`adopt`-ed inside is removed when the block ends, however it ends. Opening the
    outermost scope first removes dead runs' scratch folders from the temp folder.

    Example:
        >>> with run_scope():
        ...     in_run_scope()
        True
    """
    if not _SCOPES:
        sweep_stale(tempfile.gettempdir())  # what killed runs left in the temp folder
    scope: list[ScratchDir] = []
    _SCOPES.append(scope)
    try:
        yield
    finally:
        _SCOPES.remove(scope)
        for d in reversed(scope):
            d.cleanup()


def in_run_scope() -> bool:
    """True inside :func:`run_scope` (outputs may then stay in scratch folders until the run ends)."""
    return bool(_SCOPES)


def run_dir(kind: str, parent: str | os.PathLike | None = None) -> Path | None:
    """The innermost open :func:`run_scope`'s scratch folder of ``kind`` in ``parent`` (default: the temp folder),
    made on first use and shared by every later call in the scope; None when no run scope is open.

    Example:
        >>> with run_scope():
        ...     run_dir("demo") == run_dir("demo")
        True
        >>> run_dir("demo") is None
        True
    """
    if not _SCOPES:
        return None
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    for d in _SCOPES[-1]:
        if d.kind == kind and d.path.parent == where:
            return d.path
    folder = ScratchDir(kind, where)
    adopt(folder)
    return folder.path


def adopt(folder: ScratchDir) -> bool:
    """Hand ``folder`` to the innermost open :func:`run_scope`; False (nothing done) when none is open."""
    if not _SCOPES:
        return False
    _SCOPES[-1].append(folder)
    return True


@atexit.register
def _cleanup_at_exit() -> None:
    # A safety net: a folder nobody cleaned (an exception path missed, a library caller that never closed its run).
    for d in list(_LIVE):
        d.cleanup()


__all__ = ["ScratchDir", "adopt", "in_run_scope", "run_dir", "run_scope", "sweep_stale"]
