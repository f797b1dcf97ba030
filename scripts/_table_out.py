"""Print a benchmark's result table and write it as CSV (shared by the scripts in this folder)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def emit(frame: pd.DataFrame, title: str, csv: str | None = None, digits: int = 4) -> None:
    """``title``, then ``frame`` with ``digits`` decimals; also ``csv`` (6 significant digits) when given."""
    print(title)
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.{digits}f}"))
    if csv:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(csv, index=False, float_format="%.6g")
