"""The card's figures drawn by hfprep run's drawing process: the same bytes as drawn in-process, errors still raised
here, and the process gone when the run ends."""

from __future__ import annotations

import numpy as np
import pytest

from hfprep.output import plots


@pytest.fixture
def worker():
    plots.start_worker()
    proc = plots._worker
    assert proc is not None and proc.poll() is None
    yield proc
    plots.stop_worker()


def test_the_worker_draws_the_bytes_drawn_in_process(tmp_path, worker):
    counts = {"train": plots.length_bin_counts(np.array([3, 100, 120, 2000, 2000])), "test": {5: 2, 40: 1}}
    fill = {"train": plots.fill_bin_counts(np.array([0.5, 1.0, 1.0]))}
    plots.draw("length_histogram_png", counts, tmp_path / "a.png", title="lengths", seq_len=512)
    plots.draw("fill_histogram_png", fill, tmp_path / "c.png", 512)
    assert worker.poll() is None  # it drew them: still running, no fallback
    plots.length_histogram_png(counts, tmp_path / "b.png", title="lengths", seq_len=512)
    plots.fill_histogram_png(fill, tmp_path / "d.png", 512)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "c.png").read_bytes() == (tmp_path / "d.png").read_bytes()


def test_an_error_in_the_worker_is_raised_here(tmp_path, worker):
    with pytest.raises(FileNotFoundError):
        plots.draw("fill_histogram_png", {"train": [1] * plots.FILL_BINS}, tmp_path / "missing" / "x.png", 8)
    assert plots._worker is None and worker.wait(timeout=10) is not None


def test_the_worker_ends_with_its_pipe(worker):
    plots.stop_worker()
    assert worker.wait(timeout=10) == 0
    assert plots._worker is None
