"""Ctrl-C that stops a run cleanly: one ``KeyboardInterrupt`` in the main process, none in worker processes.

A terminal's Ctrl-C sends SIGINT to every process of the foreground group: hfprep and the worker processes that
``datasets`` forks for ``num_proc``. Workers that raise ``KeyboardInterrupt`` print a traceback each and can leave
the pool's queues locked, so the parent waits forever. Inside :func:`handle_interrupts`:

* forked workers ignore SIGINT (the parent stops the pool) and keep the default SIGTERM (how a pool stops them);
* the main process raises ``KeyboardInterrupt`` on the first SIGINT (:class:`Terminated` on SIGTERM), so every
  ``finally`` runs: temporary output and scratch folders are removed;
* a second signal while that cleanup runs is ignored; a third stops the process at once, without cleanup (the
  next run removes what is left, see :mod:`hfprep.scratch`);
* an interrupt that lands where Python cannot raise (a fork hook run while a library starts a process, a
  finalizer) is dropped by Python with an "Exception ignored" note: it is delivered again a moment later, and a
  callback it cut short before its first line runs now (logging's fork hook would otherwise keep its lock and
  every thread that logs would wait forever).

Example:
    >>> with handle_interrupts():
    ...     was_interrupted() is None
    True
"""

from __future__ import annotations

import _thread
import contextlib
import dis
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that cleanup runs."""


_state: dict[str, Any] = {"depth": 0, "hits": 0, "pid": None, "signum": None, "raised": None}

REDELIVERY_DELAY_S = 0.05
"""How long after a dropped interrupt it is delivered again (the main thread has left the fork hook by then)."""


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
        exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        _state["raised"] = exc
        raise exc
    if _state["hits"] >= 3:
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), b"hfprep: interrupted again; stopping now without cleanup\n")
        os._exit(128 + signum)
    # The second signal: cleanup of the first is running; let it finish.


def _cut_short_before_first_line(unraisable: Any) -> bool:
    """True when the dropped exception stopped ``unraisable.object`` (a function taking no arguments, such as a
    fork hook) before it ran any of its own code."""
    fn, tb = unraisable.object, unraisable.exc_traceback
    if not isinstance(fn, types.FunctionType) or tb is None or tb.tb_frame.f_code is not fn.__code__:
        return False
    code = fn.__code__
    if code.co_argcount or code.co_posonlyargcount or code.co_kwonlyargcount:
        return False
    # The eval loop checks for pending signals at RESUME, the first instruction of every function.
    resume = next((i.offset for i in dis.get_instructions(code) if i.opname == "RESUME"), None)
    return resume is not None and tb.tb_lasti <= resume


def _redeliver(signum: int) -> None:
    time.sleep(REDELIVERY_DELAY_S)
    if _state["depth"] and _state["hits"] == 0:
        _thread.interrupt_main(signum)


def _on_unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    if exc is None or exc is not _state["raised"] or os.getpid() != _state["pid"]:
        _previous_unraisablehook(unraisable)
        return
    # Our interrupt was dropped (Python cannot raise out of a fork hook or a finalizer): nobody saw it, so count it
    # as not received, finish the callback it cut short if none of it ran, and deliver the signal again.
    _state["raised"] = None
    _state["hits"] = 0
    if _cut_short_before_first_line(unraisable):
        with contextlib.suppress(Exception):
            unraisable.object()
    threading.Thread(target=_redeliver, args=(_state["signum"],), daemon=True, name="hfprep-redeliver").start()


_previous_unraisablehook = sys.unraisablehook


COMMITTED: list[Path] = []
"""Every output folder put in place in this process, in order (:func:`hfprep.output.layout.atomic_output` appends
it): a command interrupted after its output was committed (while it stops its helper process, or pushes) says the
output is complete instead of "nothing was written"."""

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
    global _previous_unraisablehook
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _state.update(depth=1, hits=0, pid=os.getpid(), signum=None, raised=None)
    _previous_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _on_unraisable
    for s in previous:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        _state.update(depth=0, raised=None)
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        if sys.unraisablehook is _on_unraisable:
            sys.unraisablehook = _previous_unraisablehook


def was_interrupted() -> int | None:
    """The first signal (``signal.SIGINT`` / ``signal.SIGTERM``) received in the current or last
    :func:`handle_interrupts` block, else None. Cleanup code may replace the ``KeyboardInterrupt`` by another
    exception (a worker pool's timeout...): this still tells that the run was interrupted."""
    return _state["signum"]


__all__ = ["Terminated", "handle_interrupts", "was_interrupted"]
