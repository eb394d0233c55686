"""Read ahead on a thread of its own: a producer (a file reader) works while the consumer (tokenizing, packing) works
on what it already gave. Parquet and Arrow's JSON reader decode without the GIL, so the two overlap on two cores.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Prefetch(Generic[T]):
    """Items of ``items`` produced by a thread of its own, up to ``ahead`` items before the consumer: a source is
    parsed while earlier batches are tokenized or packed; the producer's errors are raised in the consumer's thread,
    in order. :meth:`ahead_at_most` lowers the lead (the direct engine reads further ahead while its tokenizer is
    built, then holds fewer batches to the end of the run).

    Example:
        >>> reader = Prefetch(iter(range(5)), ahead=2).start()
        >>> list(reader)
        [0, 1, 2, 3, 4]
        >>> reader.close()
    """

    def __init__(self, items: Iterator[T], ahead: int = 2) -> None:
        self._items = items
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._slots = threading.Semaphore(ahead)
        self._ahead = ahead
        self._withheld = 0  # slots the consumer keeps instead of returning, until the lead is the new one
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="hfprep-prefetch", daemon=True)

    def start(self) -> Prefetch[T]:
        self._thread.start()
        return self

    def ahead_at_most(self, ahead: int) -> None:
        """From now on read at most ``ahead`` batches before the consumer (called from the consumer's thread)."""
        if ahead < self._ahead:
            self._withheld += self._ahead - ahead
            self._ahead = ahead

    def _produce(self) -> None:
        try:
            for b in self._items:
                while not self._slots.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return
                if self._stop.is_set():
                    return
                self._queue.put(("batch", b))
            self._queue.put(("end", None))
        except BaseException as e:  # handed to the consumer, which raises it in the run's thread
            self._queue.put(("error", e))

    def __iter__(self) -> Iterator[T]:
        while True:
            kind, value = self._queue.get()
            if kind == "batch":
                if self._withheld:
                    self._withheld -= 1
                else:
                    self._slots.release()
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
