"""token-trace: which SAE features a language model uses on a prompt, and how much each matters.

>>> from token_trace import compute_node_attribution
>>> df = compute_node_attribution("When John and Mary went to the shops, John gave the bag to Mary")
"""

from token_trace.ablation import Node, ablation_effects
from token_trace.loading import LoadError, load_model, load_saes
from token_trace.nodes import COLUMNS, layer_totals, position_totals, top_nodes
from token_trace.pipeline import compute_node_attribution, compute_node_attribution_batch

__all__ = [
    "COLUMNS",
    "LoadError",
    "Node",
    "ablation_effects",
    "compute_node_attribution",
    "compute_node_attribution_batch",
    "layer_totals",
    "load_model",
    "load_saes",
    "position_totals",
    "top_nodes",
]
