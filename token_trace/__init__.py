"""token-trace: which SAE features a language model uses on a prompt, and how much each matters.

>>> from token_trace import trace
>>> result = trace("When John and Mary went to the shops, John gave the bag to Mary")
>>> result.top_nodes(10, exclude_bos=True)

The public names below are imported on first use (PEP 562), so `import token_trace.cli` (and
`token-trace --help`) does not pay the seconds that torch, TransformerLens and SAELens take.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Each public name and the module that defines it.
_PUBLIC = {
    "Node": "token_trace.ablation",
    "ablate": "token_trace.ablation",
    "ablation_effects": "token_trace.ablation",
    "Verification": "token_trace.ablation",
    "verify": "token_trace.ablation",
    "nodes_in": "token_trace.ablation",
    "DatasetResult": "token_trace.datasets.result",
    "run_dataset": "token_trace.datasets.run",
    "DatasetSettings": "token_trace.datasets.settings",
    "read_prompts": "token_trace.datasets.inputs",
    "Faithfulness": "token_trace.circuit",
    "faithfulness": "token_trace.circuit",
    "faithfulness_curve": "token_trace.circuit",
    "MeanActivations": "token_trace.circuit",
    "mean_activations": "token_trace.circuit",
    "Graph": "token_trace.graph",
    "compute_graph": "token_trace.graph",
    "graph_from_trace": "token_trace.graph",
    "Edit": "token_trace.interventions",
    "Intervention": "token_trace.interventions",
    "intervene": "token_trace.interventions",
    "intervene_many": "token_trace.interventions",
    "LoadError": "token_trace.loading",
    "load_model": "token_trace.loading",
    "load_saes": "token_trace.loading",
    "COLUMNS": "token_trace.nodes",
    "layer_totals": "token_trace.nodes",
    "position_totals": "token_trace.nodes",
    "top_nodes": "token_trace.nodes",
    "AnswerTokenWarning": "token_trace.pipeline",
    "TOP_PREDICTION": "token_trace.options",
    "UnknownWordsWarning": "token_trace.pipeline",
    "compute_node_attribution": "token_trace.pipeline",
    "compute_node_attribution_batch": "token_trace.pipeline",
    "prepare_prompt": "token_trace.prompts",
    "trace": "token_trace.pipeline",
    "trace_batch": "token_trace.pipeline",
    "MetricRecord": "token_trace.records",
    "Prediction": "token_trace.records",
    "PromptRecord": "token_trace.records",
    "SAERecord": "token_trace.records",
    "Trace": "token_trace.records",
}

__all__ = [
    "COLUMNS",
    "TOP_PREDICTION",
    "AnswerTokenWarning",
    "DatasetResult",
    "DatasetSettings",
    "Edit",
    "Faithfulness",
    "Graph",
    "Intervention",
    "LoadError",
    "MeanActivations",
    "MetricRecord",
    "Node",
    "Prediction",
    "PromptRecord",
    "SAERecord",
    "Trace",
    "UnknownWordsWarning",
    "Verification",
    "ablate",
    "ablation_effects",
    "compute_graph",
    "compute_node_attribution",
    "compute_node_attribution_batch",
    "faithfulness",
    "faithfulness_curve",
    "graph_from_trace",
    "intervene",
    "intervene_many",
    "layer_totals",
    "load_model",
    "load_saes",
    "mean_activations",
    "nodes_in",
    "position_totals",
    "prepare_prompt",
    "read_prompts",
    "run_dataset",
    "top_nodes",
    "trace",
    "trace_batch",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'token_trace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:
    from token_trace.ablation import (
        Node,
        Verification,
        ablate,
        ablation_effects,
        nodes_in,
        verify,
    )
    from token_trace.circuit import (
        Faithfulness,
        MeanActivations,
        faithfulness,
        faithfulness_curve,
        mean_activations,
    )
    from token_trace.datasets.inputs import read_prompts
    from token_trace.datasets.result import DatasetResult
    from token_trace.datasets.run import run_dataset
    from token_trace.datasets.settings import DatasetSettings
    from token_trace.graph import Graph, compute_graph, graph_from_trace
    from token_trace.interventions import Edit, Intervention, intervene, intervene_many
    from token_trace.loading import LoadError, load_model, load_saes
    from token_trace.nodes import COLUMNS, layer_totals, position_totals, top_nodes
    from token_trace.options import TOP_PREDICTION
    from token_trace.pipeline import (
        AnswerTokenWarning,
        UnknownWordsWarning,
        compute_node_attribution,
        compute_node_attribution_batch,
        trace,
        trace_batch,
    )
    from token_trace.prompts import prepare_prompt
    from token_trace.records import MetricRecord, Prediction, PromptRecord, SAERecord, Trace
