"""Figures for dataset cards: document-length and fill-per-row histograms as deterministic PNG files.

matplotlib's Agg backend with fixed size, dpi and fonts, and no ``Software``/date metadata, so the same counts
always give the same bytes.

Histogram bins are fixed in advance (not data-dependent) so partial counts from many workers simply add up:

* document lengths: quarter-octave bins, bin ``b`` holds lengths in ``[2**(b/4), 2**((b+1)/4))``;
* fill per row: 20 bins of width 0.05 over [0, 1] (a full row lands in the last bin).

Example:
    >>> import numpy as np, tempfile, os
    >>> counts = length_bin_counts(np.array([3, 100, 120, 2000]))
    >>> path = os.path.join(tempfile.mkdtemp(), "lengths.png")
    >>> length_histogram_png({"train": counts}, path)
    >>> open(path, "rb").read(4)
    b'\\x89PNG'
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

BINS_PER_OCTAVE = 4
FILL_BINS = 20
_COLORS = ("#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8")


def length_bin(lengths: np.ndarray) -> np.ndarray:
    """Quarter-octave bin index of each length (>= 1)."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
    # The small epsilon keeps exact powers of two in their own bin despite float rounding of log2.
    return np.floor(np.log2(lengths) * BINS_PER_OCTAVE + 1e-9).astype(np.int64)


def length_bin_counts(lengths: np.ndarray) -> dict[int, int]:
    """``{bin: count}`` of the lengths (only non-empty bins)."""
    bins, counts = np.unique(length_bin(lengths), return_counts=True)
    return {int(b): int(c) for b, c in zip(bins, counts)}


def fill_bin_counts(fill: np.ndarray) -> list[int]:
    """Counts of per-row fill ratios in ``FILL_BINS`` equal bins over [0, 1]."""
    idx = np.minimum((np.asarray(fill, dtype=np.float64) * FILL_BINS).astype(np.int64), FILL_BINS - 1)
    return np.bincount(idx, minlength=FILL_BINS).astype(int).tolist()


def _pyplot():
    """matplotlib's pyplot on the Agg backend (imported on first use: ~0.4 s that only runs drawing figures pay)."""
    import matplotlib  # heavy: only the card's figures need it

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend when imported

    return plt


def _figure():
    """A figure with one bar-chart axis in the card's style; the y axis counts (integer ticks)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # matplotlib is imported by _pyplot already

    plt.rcParams.update({"svg.hashsalt": "hfprep", "font.family": "DejaVu Sans", "font.size": 9})
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5-document ticks
    return plt, fig, ax


def _tick_label(x: float, _pos: int) -> str:
    """Tick labels of a token axis: 512, 1k, 4k, 1M."""
    if x >= 1024 * 1024:
        return f"{x / 2**20:g}M"
    return f"{x / 1024:g}k" if x >= 1024 else f"{x:g}"


def _save(plt, fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def length_histogram_png(
    counts: Mapping[str, Mapping[int, int]],
    path: str | os.PathLike,
    title: str = "Document length (tokens)",
    xlabel: str = "tokens per document (log scale)",
    seq_len: int | None = None,
) -> None:
    """Bar chart of quarter-octave length bins, one colour per split (``{split: {bin: count}}``); a dashed line
    marks ``seq_len`` (documents to its right do not fit one row)."""
    plt, fig, ax = _figure()
    bins = sorted({b for c in counts.values() for b in c}) or [0]
    lo, hi = min(bins), max(bins) + 1
    edges = 2.0 ** (np.arange(lo, hi + 1) / BINS_PER_OCTAVE)
    n = max(1, len(counts))
    for k, (split, c) in enumerate(counts.items()):
        heights = np.array([c.get(b, 0) for b in range(lo, hi)], dtype=np.float64)
        # Splits side by side inside each bin (geometric sub-widths on the log axis).
        left = edges[:-1] * (edges[1:] / edges[:-1]) ** (k / n)
        right = edges[:-1] * (edges[1:] / edges[:-1]) ** ((k + 1) / n)
        total = heights.sum()
        ax.bar(left, heights, width=right - left, align="edge", color=_COLORS[k % len(_COLORS)],
               label=f"{split} ({int(total):,} docs)")
    if seq_len:
        ax.axvline(seq_len, color="#444444", linestyle="--", linewidth=1.0, label=f"seq_len {seq_len:,}")
        ax.set_xlim(min(edges[0], seq_len / 2), max(edges[-1], seq_len * 1.5))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(_tick_label)  # matplotlib wraps it in a FuncFormatter
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    ax.set_title(title)
    ax.legend(frameon=False)
    _save(plt, fig, path)


def fill_histogram_png(counts: Mapping[str, list[int]], path: str | os.PathLike, seq_len: int) -> None:
    """Bar chart of per-row fill ratios (real tokens / ``seq_len``), one colour per split."""
    plt, fig, ax = _figure()
    edges = np.linspace(0.0, 1.0, FILL_BINS + 1)
    width = 1.0 / FILL_BINS
    n = max(1, len(counts))
    for k, (split, c) in enumerate(counts.items()):
        rows = sum(c)
        ax.bar(edges[:-1] + k * width / n, c, width=width / n, align="edge", color=_COLORS[k % len(_COLORS)],
               label=f"{split} ({rows:,} rows)")
    ax.set_xlim(0, 1.0)
    ax.set_xlabel(f"fill per row (real tokens / {seq_len})")
    ax.set_ylabel("rows")
    ax.set_title("Row fill")
    ax.legend(frameon=False, loc="upper left")
    _save(plt, fig, path)


# ----------------------------------------------------------------------------------------------- drawing worker

_WORKER = r"""
import importlib.util, pickle, signal, struct, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the run's to handle; this process ends with its pipe
spec = importlib.util.spec_from_file_location("hfprep_card_figures", sys.argv[1])
figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(figures)
figures._pyplot()
read, write = sys.stdin.buffer.read, sys.stdout.buffer
while len(header := read(8)) == 8:
    name, args, kwargs = pickle.loads(read(struct.unpack("<Q", header)[0]))
    try:
        getattr(figures, name)(*args, **kwargs)
        reply = b""
    except Exception as e:
        reply = f"{type(e).__name__}: {e}".encode()
    write.write(struct.pack("<Q", len(reply)) + reply)
    write.flush()
"""

_worker: subprocess.Popen | None = None


def start_worker() -> None:
    """Start the drawing process of this run (``hfprep run`` calls it first thing): it imports matplotlib while the
    run imports and loads everything else, on another core, so the card's figures add ~0.4 s less to a run. It loads
    this file alone (not the hfprep package) and ends when this process closes its pipe or exits."""
    global _worker
    if _worker is not None:
        return
    with contextlib.suppress(OSError, ValueError):  # no worker: the figures are drawn in this process
        _worker = subprocess.Popen(
            [sys.executable, "-c", _WORKER, os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )


def stop_worker() -> None:
    """End the drawing process (its pipe closes; it exits)."""
    global _worker
    worker, _worker = _worker, None
    if worker is None:
        return
    with contextlib.suppress(OSError, ValueError):
        worker.stdin.close()
    try:
        worker.wait(timeout=5)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def draw(name: str, *args: Any, **kwargs: Any) -> None:
    """Call figure function ``name`` (``length_histogram_png``...) in the drawing process when one runs, else here:
    the same function with the same arguments, so the same bytes."""
    worker = _worker
    if worker is not None and worker.poll() is None:
        payload = pickle.dumps((name, args, kwargs))
        try:
            worker.stdin.write(struct.pack("<Q", len(payload)) + payload)
            worker.stdin.flush()
            header = worker.stdout.read(8)
            if len(header) == 8:
                reply = worker.stdout.read(struct.unpack("<Q", header)[0])
                if not reply:
                    return
        except (OSError, ValueError):
            pass
        stop_worker()  # it failed once: draw here from now on (the error, if it is one, is raised below)
    globals()[name](*args, **kwargs)
