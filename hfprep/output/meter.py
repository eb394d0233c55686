"""What the card and the summary say about a split, measured on its rows as they are written.

:class:`SplitMeter` is fed every row group the shard writer writes (:class:`~hfprep.output.shards.ShardWriter`'s
``on_row_group``), so a run never reads its output back: rows, tokens, padding, loss tokens and segments
(:class:`~hfprep.output.validate.SplitStats`, the numbers ``hfprep validate`` re-checks), the per-row fill and
segment-length histograms of the plots, the packing report (:func:`~hfprep.output.quality.packing_report`) and,
when given one, the loss audit (:class:`~hfprep.output.audit.LossAudit`).
The numbers do not depend on how the rows are cut into batches.

Example:
    >>> import pyarrow as pa
    >>> meter = SplitMeter(seq_len=4, pad_token_id=0, padded=False)
    >>> meter.add(pa.table({"input_ids": [[5, 6, 7, 8]], "position_ids": [[0, 1, 0, 1]],
    ...                     "loss_mask": [[True, True, True, True]]}))
    >>> meter.stats.segments, meter.segment_bins, meter.report()["fill_ratio"]
    (2, {4: 2}, 1.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from ..schema import row_segments, table_to_flat
from .audit import LossAudit
from .plots import fill_bin_counts, length_bin_counts
from .quality import PackingReportBuilder
from .validate import SplitStats, segment_stats

ROW_COLUMNS = ["input_ids", "position_ids", "loss_mask"]


class SplitMeter:
    """Accumulates a split's output numbers from batches of its packed rows (see the module docstring)."""

    def __init__(self, seq_len: int, pad_token_id: int | None, padded: bool, audit: LossAudit | None = None) -> None:
        self.audit = audit  # the loss audit of the split's rows (hfprep.output.audit), when the run has one
        self.pad_token_id = pad_token_id
        self.padded = padded
        self.stats = SplitStats()
        self.fill_counts = np.zeros(len(fill_bin_counts(np.zeros(0))), dtype=np.int64)
        self.segment_bins: dict[int, int] = {}
        self._report = PackingReportBuilder(seq_len, pad_token_id=pad_token_id, padded=padded)

    def add(self, table: pa.Table) -> None:
        """Measure one batch of rows (``input_ids``, ``position_ids``, ``loss_mask``; other columns are ignored)."""
        ids, pos, mask, offsets = table_to_flat(table.select(ROW_COLUMNS))
        r = row_segments(ids, pos, mask, offsets, self.pad_token_id, self.padded)  # once, for every number below
        if self.audit is not None:
            self.audit.add_flat(ids, mask, offsets, r, row_base=self.stats.rows)
        s, fill, seg_len = segment_stats(r)
        self.stats.add(s)
        self.fill_counts += np.asarray(fill_bin_counts(fill), dtype=np.int64)
        for b, c in length_bin_counts(seg_len).items() if len(seg_len) else ():
            self.segment_bins[b] = self.segment_bins.get(b, 0) + c
        self._report.add_segments(r)

    @property
    def fill_bins(self) -> list[int]:
        """Rows per fill bin (the fill histogram's bars)."""
        return self.fill_counts.astype(int).tolist()

    def report(self, stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The packing report of the rows measured so far, with the packer's ``stats``' losses by reason."""
        return self._report.report(stats)
