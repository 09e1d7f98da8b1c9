"""A bfloat16 model against float32: the engine accumulates in float32, so nodes and edges move
only by the model's own rounding (bars from `tests/precision.py`'s measurement, see the README's
"bf16 models")."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import PROMPT, tiny_model
from tests.precision import edge_agreement, node_agreement
from token_trace import loading, trace
from token_trace.graph import compute_graph
from token_trace.options import TraceOptions

#: Bars for the tiny model (measured: nodes 0.022 / 0.0007 of the largest, top-20 all kept;
#: edges 0.022 of the largest, every top-100 sign kept). Gauss-Legendre IG, whose points all run
#: in bf16 (Riemann's first is the clean pass), measured 0.087 / 0.0010 at 4 points, 0.072 / 0.0012
#: at 8: its own bar.
MAX_NODE_ERROR, MEAN_NODE_ERROR, MIN_TOP_OVERLAP = 0.05, 0.005, 0.9
MAX_GAUSS_LEGENDRE_ERROR = 0.12
MAX_EDGE_ERROR, MIN_EDGE_SIGNS = 0.05, 0.95


@pytest.fixture(scope="module")
def bf16_model():
    return tiny_model().to(torch.bfloat16)


@pytest.mark.parametrize(
    "method, rule", [("atp", "riemann"), ("ig", "riemann"), ("ig", "gauss-legendre")]
)
def test_a_bf16_model_stays_within_the_stated_tolerance_of_fp32(
    model, saes, bf16_model, method, rule
):
    kwargs = {"answer": " Mary", "contrast": " John", "method": method, "ig_steps": 4,
              "ig_rule": rule}  # fmt: skip
    exact = trace(PROMPT, model, saes, **kwargs)
    half = trace(PROMPT, bf16_model, saes, **kwargs)
    assert half.nodes["attribution"].dtype == exact.nodes["attribution"].dtype  # float32 table
    agreement = node_agreement(exact.nodes, half.nodes)
    bar = MAX_GAUSS_LEGENDRE_ERROR if (method, rule) == ("ig", "gauss-legendre") else MAX_NODE_ERROR
    assert agreement.max_error < bar and agreement.mean_error < MEAN_NODE_ERROR
    assert agreement.top_overlap >= MIN_TOP_OVERLAP
    assert abs(half.metric.value - exact.metric.value) < 0.05 * abs(exact.metric.value)


def test_bf16_graph_edges_agree_with_fp32(model, saes, bf16_model):
    kwargs = {"answer": " Mary", "contrast": " John", "max_nodes": 60}
    exact = compute_graph(PROMPT, model, saes, **kwargs)
    half = compute_graph(PROMPT, bf16_model, saes, **kwargs)
    agreement = edge_agreement(exact, half)
    assert agreement.max_error < MAX_EDGE_ERROR and agreement.sign_agreement >= MIN_EDGE_SIGNS
    assert half.candidate_edges["weight"].dtype == exact.candidate_edges["weight"].dtype


def test_model_dtype_auto_is_fp32_on_a_cpu_and_named_dtypes_load_and_cache_apart():
    assert TraceOptions().model_dtype == "auto"
    assert loading.model_dtype("auto", "cpu") == "float32"
    assert loading.model_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(ValueError, match="Unknown model dtype 'int8'"):
        TraceOptions(model_dtype="int8")
    half = loading.load_model("ioi-demo", "cpu", dtype="bfloat16")
    full = loading.load_model("ioi-demo", "cpu")
    assert half.cfg.dtype == torch.bfloat16 and next(half.parameters()).dtype == torch.bfloat16
    assert next(full.parameters()).dtype == torch.float32 and half is not full
