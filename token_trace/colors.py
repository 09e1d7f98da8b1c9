"""The one colour meaning of everything token-trace draws: the app's page and the dataset report.

Red means a node raises the metric (supports the prediction), blue that it lowers it; grey marks
what has no sign of its own. The library's own outputs (the dataset report) read these, and so
does the app's theme, so a colour means the same in every picture.
"""

from __future__ import annotations

POSITIVE_RGB = (202, 62, 54)  # the red end of plotly's RdBu
NEGATIVE_RGB = (39, 110, 176)  # its blue end
POSITIVE = "#ca3e36"
NEGATIVE = "#276eb0"
NEUTRAL = "#8c8c8c"  # what has no sign of its own
TOTAL = "#222222"
#: Plotly's diverging scale with red for positive, blue for negative.
DIVERGING = "RdBu_r"


def signed_colour(value: float) -> str:
    return POSITIVE if value >= 0 else NEGATIVE
