"""The page's one look: the colour meaning shared by tokens, table and charts, and its CSS.

Red means a node raises the metric (supports the prediction), blue that it lowers it, everywhere
on the page: token backgrounds, heatmap, bars and graph marks read their colours from here (the
colours themselves live in `token_trace.colors`, which the library's dataset report shares).
"""

from __future__ import annotations

from token_trace.colors import (  # noqa: F401  (the page reads them from here)
    DIVERGING,
    NEGATIVE,
    NEGATIVE_RGB,
    NEUTRAL,
    POSITIVE,
    POSITIVE_RGB,
    TOTAL,
    signed_colour,
)

FONT = "Inter, ui-sans-serif, system-ui, sans-serif"
MONO = "ui-monospace, SFMono-Regular, Menlo, monospace"


def signed_background(value: float, strength: float) -> str:
    """A token's background: its sign's colour, more opaque the stronger (0..1) it is."""
    red, green, blue = POSITIVE_RGB if value >= 0 else NEGATIVE_RGB
    return f"rgba({red}, {green}, {blue}, {0.08 + 0.8 * strength:.3f})"


CSS = """
.tt-header h1 { margin: 0; font-size: 1.6rem; letter-spacing: -0.01em; }
.tt-header p { margin: 0.15rem 0 0; color: var(--body-text-color-subdued); }
.tt-banner { padding: 0.6rem 0.9rem; border-radius: 8px; background: #fff4e0;
  border: 1px solid #f0c36d; color: #5c4300; }
.dark .tt-banner { background: #3a2f12; border-color: #7a5d1a; color: #f5dfa8; }
.tt-summary { font-size: 0.92rem; padding: 0.2rem 0; }
.tt-warning { margin-top: 0.3rem; padding: 0.4rem 0.7rem; border-radius: 6px;
  background: #fff4e0; border: 1px solid #f0c36d; color: #5c4300; }
.dark .tt-warning { background: #3a2f12; border-color: #7a5d1a; color: #f5dfa8; }
.tt-hidden { display: none !important; }
.tt-stale { color: var(--body-text-color-subdued); font-style: italic; }
.tt-tokens { padding: 0.4rem 0.2rem; }
.tt-row { display: flex; flex-wrap: wrap; gap: 4px 2px; align-items: flex-end; }
.tt-tok { display: inline-flex; flex-direction: column; align-items: center; padding: 2px 3px;
  border-radius: 4px; border: 1px solid transparent; }
.tt-text { white-space: pre; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
  font-size: 0.95rem; }
.tt-val { font-size: 0.66rem; color: var(--body-text-color-subdued);
  font-variant-numeric: tabular-nums; }
.tt-strong, .tt-strong .tt-val { color: #fff; }
.tt-bos { background: var(--background-fill-secondary); opacity: 0.7; }
.tt-last { border-color: var(--body-text-color); }
.tt-target { border: 1px dashed var(--color-accent); }
.tt-arrow { align-self: center; padding: 0 4px; color: var(--body-text-color-subdued); }
.tt-legend { display: flex; flex-wrap: wrap; gap: 1rem; margin-top: 0.5rem; font-size: 0.75rem;
  color: var(--body-text-color-subdued); }
.tt-legend i { display: inline-block; width: 0.8rem; height: 0.8rem; border-radius: 2px;
  margin-right: 0.3rem; vertical-align: -0.1rem; }
.tt-panel { font-size: 0.9rem; }
.tt-node-head { padding-bottom: 0.4rem; border-bottom: 1px solid var(--border-color-primary);
  margin-bottom: 0.4rem; }
.tt-np { width: 100%; height: 560px; border: 1px solid var(--border-color-primary);
  border-radius: 6px; }
.tt-muted { color: var(--body-text-color-subdued); }
.tt-links { font-size: 0.88rem; }
.tt-card p { margin: 0.35rem 0; }
.tt-card ol { margin: 0.2rem 0 0 1.2rem; padding: 0; }
.tt-chip { display: inline-block; padding: 1px 6px; margin: 2px; border-radius: 10px;
  background: var(--background-fill-secondary); font-family: ui-monospace, monospace; }
.tt-context { white-space: pre-wrap; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.tt-context mark { background: rgba(202, 62, 54, 0.35); border-radius: 3px; padding: 0 1px; }
/* The flow graph keeps the width it needs for its nodes not to overlap and scrolls sideways. */
#tt-graph { overflow-x: auto; }
#tt-graph .js-plotly-plot, #tt-graph .plot-container { min-width: max-content; }
.tt-label { font-style: italic; margin-top: 0.25rem; }
.tt-graph-card ol { margin: 0.2rem 0 0 1.2rem; padding: 0; font-size: 0.85rem; }
/* Phones: filters wrap instead of clipping their labels; charts keep their own width. */
@media (max-width: 640px) {
  #tt-filters { flex-wrap: wrap; }
  #tt-filters > * { min-width: fit-content !important; flex: 1 1 auto; }
  #tt-heatmap, #tt-layers, #tt-scatter { overflow-x: auto; }
  .modebar-container { display: none; }
}
"""
