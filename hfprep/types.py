"""Array type aliases shared by the stages (jaxtyping shapes, numpy dtypes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from jaxtyping import Bool, UInt32

Row = dict[Any, Any]
"""A raw input row, as the seed notebook calls it."""

TokenizedRow = dict[str, UInt32[np.ndarray, " example_len"] | Bool[np.ndarray, " example_len"]]
"""``{"input_ids": uint32, "position_ids": uint32, "loss_mask": bool}``, all the same length."""

TOKEN_DTYPE = np.uint32
POSITION_DTYPE = np.uint32
MASK_DTYPE = np.bool_

ROW_COLUMNS = ("input_ids", "position_ids", "loss_mask")
