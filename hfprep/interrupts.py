"""Ctrl-C that stops a run cleanly: one ``KeyboardInterrupt`` in the main process, none in worker processes.

A terminal's Ctrl-C sends SIGINT to every process of the foreground group: hfprep and the worker processes that
``datasets`` forks for ``num_proc``. Workers that raise ``KeyboardInterrupt`` print a traceback each and can leave
the pool's queues locked, so the parent waits forever. Inside :func:`handle_interrupts`:

* forked workers ignore SIGINT (the parent stops the pool) and keep the default SIGTERM (how a pool stops them);
* the main process raises ``KeyboardInterrupt`` on the first SIGINT (:class:`Terminated` on SIGTERM), so every
  ``finally`` runs: temporary output and scratch folders are removed;
* a second signal while that cleanup runs is ignored; a third stops the process at once, without cleanup (the
  next run removes what is left, see :mod:`hfprep.scratch`).

Example:
    >>> with handle_interrupts():
    ...     was_interrupted() is None
    True
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that cleanup runs."""


_state: dict[str, Any] = {"depth": 0, "hits": 0, "pid": None, "signum": None}


def _after_fork_in_child() -> None:
    if _state["depth"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _state.update(depth=0, hits=0, pid=None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _on_signal(signum: int, frame: Any) -> None:
    if os.getpid() != _state["pid"]:  # a child that was not forked (or forked before the scope): do nothing
        return
    _state["hits"] += 1
    if _state["hits"] == 1:
        _state["signum"] = signum
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if _state["hits"] >= 3:
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), b"hfprep: interrupted again; stopping now without cleanup\n")
        os._exit(128 + signum)
    # The second signal: cleanup of the first is running; let it finish.


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Within the block: SIGINT/SIGTERM as described in the module docstring. Re-entrant; a no-op outside the
    main thread (Python delivers signals there only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _state["depth"]:
        _state["depth"] += 1
        try:
            yield
        finally:
            _state["depth"] -= 1
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _state.update(depth=1, hits=0, pid=os.getpid(), signum=None)
    for s in previous:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        _state["depth"] = 0
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def was_interrupted() -> int | None:
    """The first signal (``signal.SIGINT`` / ``signal.SIGTERM``) received in the current or last
    :func:`handle_interrupts` block, else None. Cleanup code may replace the ``KeyboardInterrupt`` by another
    exception (a worker pool's timeout...): this still tells that the run was interrupted."""
    return _state["signum"]


__all__ = ["Terminated", "handle_interrupts", "was_interrupted"]
