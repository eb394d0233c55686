"""Array type aliases shared by the stages (jaxtyping shapes, numpy dtypes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Bool, UInt32

Row = dict[Any, Any]
"""A raw input row, as the seed notebook calls it."""

TokenizedRow = dict[str, UInt32[np.ndarray, " example_len"] | Bool[np.ndarray, " example_len"]]
"""``{"input_ids": uint32, "position_ids": uint32, "loss_mask": bool}``, all the same length."""

# The row contract lives in schema.py; these names stay importable from here.
from .schema import MASK_DTYPE, POSITION_DTYPE, ROW_COLUMNS, TOKEN_DTYPE  # noqa: E402, F401
