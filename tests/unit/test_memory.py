"""The memory estimate and the app's refusals of what cannot fit the device."""

from __future__ import annotations

import gradio as gr
import pytest

from token_trace import memory
from token_trace.app import service
from token_trace.app.requests import RequestFields, make_settings
from token_trace.options import TraceOptions

SHORT = "When Mary and John went to the store, John gave a drink to"


def test_widths_spelled_in_sae_ids_read_as_saelens_reads_them():
    assert memory.width_in_id("layer_0/width_16k/canonical") == 16384
    assert memory.width_in_id("layer_12_width_65k_l0_big") == 65536
    assert memory.width_in_id("layer_12_width_1m_l0_small") == 2**20
    assert memory.width_in_id("blocks.6.hook_resid_pre") is None


def test_gemma_shapes_come_from_transformerlens_and_saelens_offline():
    """TransformerLens hard-codes Gemma's configs; the meta model counts its unembedding apart
    from the embedding (256,000 x 2,304 each), as it holds them."""
    shape = memory.model_shape("gemma-2-2b")
    assert (shape.n_layers, shape.d_model, shape.d_vocab) == (26, 2304, 256000)
    assert 3.1e9 < shape.n_elements < 3.3e9
    (sae,) = memory.sae_shapes("gemma-scope-2b-pt-res-canonical", ["layer_3/width_16k/canonical"],
                               shape.d_model)  # fmt: skip
    assert sae == memory.SAEShape("blocks.3.hook_resid_post", 2304, 16384)


def test_the_estimate_grows_with_tokens_saes_and_graphs_and_halves_in_bf16():
    model = memory.model_shape("gemma-2-2b")
    saes = [memory.SAEShape(f"blocks.{i}.hook_resid_post", 2304, 16384) for i in range(26)]
    small = memory.estimate(model, saes[:2], 16)
    assert memory.estimate(model, saes[:2], 256).activations > small.activations
    assert memory.estimate(model, saes, 16).saes == 13 * small.saes
    assert memory.estimate(model, saes[:2], 16, max_nodes=200).graph > small.graph == 0
    half = memory.estimate(model, saes[:2], 16, model_dtype="bfloat16")
    assert half.weights * 2 == small.weights and half.saes == small.saes


def _ioi(text: str = SHORT):
    return make_settings(RequestFields(text=text, model="ioi-demo"))


def _budget_for(settings, n_tokens: int) -> str:
    model = memory.model_shape("ioi-demo")
    shapes = memory.sae_shapes("ioi-demo", settings.sae_ids, model.d_model)
    return str(memory.estimate(model, shapes, n_tokens, max_nodes=200).total / memory.GIB)


def test_a_preset_that_cannot_fit_one_token_is_refused_before_loading(monkeypatch):
    monkeypatch.setenv(memory.MEMORY_ENV, "0.25")
    with pytest.raises(memory.DoesNotFit, match=r"ioi-demo with 4 SAEs needs about .* even for "
                       r"one token; this device has 0.2 GB \(TOKEN_TRACE_MEMORY_GB"):  # fmt: skip
        service.load_and_check(_ioi(), 256)


def test_a_prompt_too_long_for_the_device_is_refused_with_the_length_that_fits(monkeypatch):
    settings = _ioi()
    monkeypatch.setenv(memory.MEMORY_ENV, _budget_for(settings, 8))
    service.load_and_check(settings, 256)  # the trace alone fits
    with pytest.raises(memory.DoesNotFit, match=r"A prompt of 14 tokens with ioi-demo and a graph "
                       r"needs about .*enough for about 8 tokens"):  # fmt: skip
        service.load_and_check(settings, 256, max_nodes=200)


def test_the_refusal_reaches_the_page_as_a_message_not_a_traceback(monkeypatch):
    monkeypatch.setenv(memory.MEMORY_ENV, "0.25")
    with pytest.raises(gr.Error) as error:
        service.user_errors(service.Service(256).obtain)(_ioi())
    assert "even for one token" in error.value.message and "Traceback" not in error.value.message


def test_a_bad_budget_is_named():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(memory.MEMORY_ENV, "lots")
        with pytest.raises(ValueError, match="TOKEN_TRACE_MEMORY_GB must be a positive number"):
            memory.memory_budget("cpu")


def test_the_estimate_needs_no_loading_for_a_gemma_preset_that_cannot_fit(monkeypatch):
    """All 26 16k SAEs of Gemma Scope 2B on a 16 GB CPU: refused from shapes alone."""
    monkeypatch.setenv(memory.MEMORY_ENV, "16")
    ids = [f"layer_{i}/width_16k/canonical" for i in range(26)]
    with pytest.raises(memory.DoesNotFit, match="gemma-scope-2b-pt-res-canonical with 26 SAEs"):
        service.check_memory("gemma-2-2b", "gemma-scope-2b-pt-res-canonical", ids,
                             TraceOptions(device="cpu"), n_tokens=256)  # fmt: skip
