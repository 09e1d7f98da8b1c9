"""Act on a circuit: set, scale or patch SAE nodes and see what the model does instead.

An edit changes one node and nothing else. Each SAE's error term is kept, so setting feature i at
hook h and position t from `f` to `f'` adds `(f' - f) d_i` to the activation there (for SAELens's
decoders, exactly `decode(f') - decode(f)`), and editing the error node replaces the error vector
`e = x - decode(encode(x))` by the edited one. Everything downstream is the model's own
recomputation: later SAEs are not spliced in, so they are not forced to reconstruct, and `f` is the
feature's value in the edited run (an upstream edit moves it).

Several edit sets run as one batch, one row each, beside an unedited row (the "before"), and
greedy generation runs on all rows together, each step recomputing the whole sequence, so an edit
at `*` (every position) also reaches the tokens generated so far.

With every edit "to baseline", `metric_before - metric_after` is what `token_trace.ablate` measures
for the same nodes (tested): both keep every other node as the edited model computes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from sae_lens import SAE

from token_trace.ablation import sae_leaves
from token_trace.backend import Model
from token_trace.hooks import final_residual, hooked, logits_at
from token_trace.node_refs import NodeRef, check_syntax, resolve_node
from token_trace.pipeline import _top_predictions
from token_trace.prompts import str_tokens
from token_trace.records import Prediction, Trace
from token_trace.replay import model_and_saes, replay

#: Most edits in one edit set, and most edit sets in one batched call.
MAX_EDITS = 512
MAX_EDIT_SETS = 64
#: Most tokens one call generates.
MAX_GENERATE = 128
#: Tokens listed as most raised and most lowered by an edit set (`LogitChange`).
N_CHANGED_TOKENS = 5

_VALUE, _SCALE, _BASELINE = 0, 1, 2


@dataclass(frozen=True)
class Edit:
    """One node's new value: exactly one of `value` (set it), `scale` (multiply it; 0 zero-ablates)
    or `baseline=True` (patch it to its baseline: 0, or its value on the trace's counterfactual).

    `node` is a graph node id, `{layer}_{feature}_{position}` (errors `{layer}_-1_{position}`,
    `layer` the SAE's residual depth); `*` in place of the position edits every position, generated
    tokens included. An error node's `value` is the norm of the error vector (its direction kept),
    as the node table's `activation` column gives it.
    """

    node: str
    value: float | None = None
    scale: float | None = None
    baseline: bool = False

    def __post_init__(self) -> None:
        check_syntax(self.node)
        given = [name for name in ("value", "scale") if getattr(self, name) is not None]
        if not isinstance(self.baseline, bool):
            raise ValueError(f"Edit of {self.node!r}: baseline must be True or False.")
        given += ["baseline"] if self.baseline else []
        if len(given) != 1:
            raise ValueError(
                f"Edit of {self.node!r}: give exactly one of value=, scale= or baseline=True "
                f"(got {', '.join(given) or 'none'})."
            )
        number = self.value if self.value is not None else self.scale
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise ValueError(f"Edit of {self.node!r}: {given[0]} must be a number.")
            if not math.isfinite(number):
                raise ValueError(f"Edit of {self.node!r}: {given[0]} must be finite, got {number}.")


@dataclass(frozen=True)
class TokenLogit:
    """One vocabulary entry's logit without and with the edits."""

    token: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after - self.before


@dataclass(frozen=True)
class LogitChange:
    """How the edits move the logits where the metric reads its (first) target."""

    position: int
    """The position whose next-token logits these are (the metric's first position)."""
    target: TokenLogit | None
    """The metric's first token (the answer, or the next token); None for the loss metric."""
    raised: tuple[TokenLogit, ...]
    """The tokens whose logit rose most, most first."""
    lowered: tuple[TokenLogit, ...]
    """The tokens whose logit fell most, most first."""


@dataclass(frozen=True)
class Intervention:
    """One edit set's effect on the trace's prompt: the metric, the next-token predictions, the
    logits at the target, and (with `generate`) greedy continuations, without and with the edits."""

    edits: tuple[Edit, ...]
    metric_before: float
    metric_after: float
    predictions_before: tuple[Prediction, ...]
    """The model's top next tokens after the prompt's last position, unedited."""
    predictions_after: tuple[Prediction, ...]
    logit_change: LogitChange
    generated_before: str | None
    """Greedy continuation of `generate` tokens, unedited; None when none was asked for."""
    generated_after: str | None

    @property
    def metric_change(self) -> float:
        return self.metric_after - self.metric_before


def intervene(
    result: Trace,
    edits: Sequence[Edit],
    generate: int = 0,
    *,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    device: str | None = None,
) -> Intervention:
    """Rerun the trace's prompt with `edits` applied (see the module docstring).

    Prompt, metric and baseline come from `result` (`token_trace.replay`); the model and SAEs are
    loaded by name (cached) unless given. `generate` > 0 also generates that many tokens greedily
    without and with the edits.
    """
    (out,) = intervene_many(result, [edits], generate, model=model, saes=saes, device=device)
    return out


def intervene_many(
    result: Trace,
    edit_sets: Sequence[Sequence[Edit]],
    generate: int = 0,
    *,
    model: Model | None = None,
    saes: Mapping[str, SAE] | None = None,
    device: str | None = None,
) -> list[Intervention]:
    """`intervene` for several edit sets in one batched forward (and one batched generation):
    one `Intervention` per set, each equal to its own `intervene` call up to float rounding."""
    edit_sets = [tuple(edits) for edits in edit_sets]
    if not edit_sets:
        raise ValueError("No edit sets given.")
    if len(edit_sets) > MAX_EDIT_SETS:
        raise ValueError(f"{len(edit_sets)} edit sets; one call runs at most {MAX_EDIT_SETS}.")
    if isinstance(generate, bool) or not isinstance(generate, int) or generate < 0:
        raise ValueError(
            f"generate must be a whole number of tokens (0 or more), got {generate!r}."
        )
    if generate > MAX_GENERATE:
        raise ValueError(f"generate={generate}: one call generates at most {MAX_GENERATE} tokens.")
    model, saes = model_and_saes(result, model, saes, device)
    inputs = replay(result, model)
    n_tokens = inputs.tokens.shape[1]
    if n_tokens + generate > model.cfg.n_ctx:
        raise ValueError(
            f"The prompt ({n_tokens} tokens) and {generate} generated tokens exceed the model's "
            f"context of {model.cfg.n_ctx}."
        )
    counterfactual = inputs.baseline_tokens is not None
    resolved = [_resolve(result, saes, edits, generate, counterfactual) for edits in edit_sets]
    patched = any(kind == _BASELINE for refs in resolved for _, kind, _ in refs)
    base_features, base_errors = (
        sae_leaves(model, saes, inputs.baseline_tokens)
        if counterfactual and patched
        else (None, None)
    )
    hooks = []
    for hook in dict.fromkeys(ref.hook_name for refs in resolved for ref, _, _ in refs):
        rows = [
            (row + 1, ref, kind, number)  # row 0 is the unedited run
            for row, refs in enumerate(resolved)
            for ref, kind, number in refs
            if ref.hook_name == hook
        ]
        baseline = None if base_features is None else (base_features[hook], base_errors[hook])
        hooks.append((hook, _EditHook(saes[hook], rows, baseline, model.cfg.device)))

    position = _target_position(result, n_tokens)
    tokens = inputs.tokens.expand(len(edit_sets) + 1, -1)
    with torch.no_grad(), hooked(model, hooks):
        residual = final_residual(model, tokens)
        metric = inputs.metric(logits_at(model, residual, inputs.metric.positions)).float()
        target_logits = logits_at(model, residual[:, position : position + 1], None)[:, 0].float()
        prompt_logits = logits_at(model, residual[:, -1:], None)[:, 0].float()
        tokens = _generate(model, tokens, prompt_logits, generate)
    texts = [_text(model, row[n_tokens:]) for row in tokens] if generate else None
    target_id = result.metric.token_ids[0] if result.metric.name in _TARGETED else None
    before = _top_predictions(model, prompt_logits[0])
    return [
        Intervention(
            edits=edits,
            metric_before=float(metric[0]),
            metric_after=float(metric[row]),
            predictions_before=before,
            predictions_after=_top_predictions(model, prompt_logits[row]),
            logit_change=_logit_change(
                model, position, target_id, target_logits[0], target_logits[row]
            ),
            generated_before=None if texts is None else texts[0],
            generated_after=None if texts is None else texts[row],
        )
        for row, edits in enumerate(edit_sets, start=1)
    ]


#: Metrics whose first token id is a target the logits can be read at.
_TARGETED = ("logprob", "logit_diff")


def _target_position(result: Trace, n_tokens: int) -> int:
    """Where the metric reads its first target; the last position for the loss metric."""
    positions = result.metric.positions
    if result.metric.name in _TARGETED and positions:
        return positions[0]
    return n_tokens - 1


def _generate(model: Model, tokens: torch.Tensor, logits: torch.Tensor, n: int) -> torch.Tensor:
    """`tokens` `[rows, T]` followed by `n` greedy tokens per row, from the prompt's last logits.

    Each step reruns the whole sequence (no cache), so the hooks edit every position again, the
    generated ones included.
    """
    for step in range(n):
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
        if step + 1 < n:
            logits = logits_at(model, final_residual(model, tokens)[:, -1:], None)[:, 0]
    return tokens


def _text(model: Model, ids: torch.Tensor) -> str:
    if model.tokenizer is None:
        return " ".join(str(int(i)) for i in ids)
    return model.tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False)


def _logit_change(
    model: Model,
    position: int,
    target_id: int | None,
    before: torch.Tensor,
    after: torch.Tensor,
) -> LogitChange:
    change = after - before
    k = min(N_CHANGED_TOKENS, change.shape[0])

    def entries(ids: torch.Tensor) -> tuple[TokenLogit, ...]:
        names = str_tokens(model, ids)
        return tuple(
            TokenLogit(name, float(before[i]), float(after[i])) for name, i in zip(names, ids)
        )

    target = None if target_id is None else entries(torch.tensor([target_id]))[0]
    return LogitChange(
        position=position,
        target=target,
        raised=entries(change.topk(k).indices),
        lowered=entries((-change).topk(k).indices),
    )


# --------------------------------------------------------------------------- resolving edits


def _resolve(
    result: Trace,
    saes: Mapping[str, SAE],
    edits: tuple[Edit, ...],
    generate: int,
    counterfactual: bool,
) -> list[tuple[NodeRef, int, float]]:
    """Each edit's node, kind and number, checked against the trace; duplicates refused."""
    if len(edits) > MAX_EDITS:
        raise ValueError(f"{len(edits)} edits in one set; at most {MAX_EDITS}.")
    out, positions = [], {}
    for edit in edits:
        if not isinstance(edit, Edit):
            raise ValueError(f"Edits must be token_trace.Edit records, got {type(edit).__name__}.")
        ref = resolve_node(result, saes, edit.node, allow_all_positions=True)
        taken = positions.setdefault((ref.hook_name, ref.feature), [])
        if ref.position in taken or (taken and None in (ref.position, *taken)):
            raise ValueError(
                f"Node {edit.node!r} is edited twice in one set ('*' is every position)."
            )
        taken.append(ref.position)
        if edit.baseline:
            if ref.position is None and counterfactual and generate:
                raise ValueError(
                    f"Edit of {edit.node!r}: the counterfactual has no value at generated "
                    "positions; patch explicit positions, or generate=0."
                )
            kind, number = _BASELINE, 0.0
        elif edit.value is not None:
            if ref.is_error and edit.value < 0:
                raise ValueError(
                    f"Edit of {edit.node!r}: an error node's value is the error's norm, "
                    f"so it cannot be negative (got {edit.value})."
                )
            kind, number = _VALUE, float(edit.value)
        else:
            kind, number = _SCALE, float(edit.scale)
        out.append((ref, kind, number))
    return out


# --------------------------------------------------------------------------- the hook


class _EditHook:
    """The forward hook at one SAE's hook point that applies every row's edits there.

    Only the edited (row, position) pairs are encoded: `f = encode(x)`, `e = x - decode(f)`;
    the activation there becomes `x + decode(f') - decode(f) + (e' - e)`, so rows and positions
    without an edit pass through bit for bit.
    """

    def __init__(
        self,
        sae: SAE,
        edits: list[tuple[int, NodeRef, int, float]],
        baseline: tuple[torch.Tensor, torch.Tensor] | None,
        device: str | torch.device,
    ) -> None:
        def column(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        self.sae = sae
        self.row = column([row for row, _, _, _ in edits], torch.long)
        self.position = column(
            [-1 if r.position is None else r.position for _, r, _, _ in edits], torch.long
        )
        self.feature = column([ref.feature for _, ref, _, _ in edits], torch.long)
        self.kind = column([kind for _, _, kind, _ in edits], torch.long)
        self.number = column([number for _, _, _, number in edits], torch.float64)
        # The baseline values at this hook, `[T, d_sae]` and `[T, d_in]`; None: zero.
        self.baseline = None if baseline is None else (baseline[0][0], baseline[1][0])

    def _expanded(self, n_pos: int) -> tuple[torch.Tensor, ...]:
        """The edits with `*` expanded to each of the `n_pos` positions of this pass."""
        every = self.position < 0
        n_every = int(every.sum())
        positions = torch.arange(n_pos, device=self.position.device).repeat(n_every)
        columns = (self.row, self.feature, self.kind, self.number)
        return (
            torch.cat([self.position[~every], positions]),
            *(torch.cat([c[~every], c[every].repeat_interleave(n_pos)]) for c in columns),
        )

    @torch.no_grad()
    def __call__(self, act: torch.Tensor, name: str) -> torch.Tensor:
        n_rows, n_pos = act.shape[:2]
        position, row, feature, kind, number = self._expanded(n_pos)
        dtype = torch.promote_types(act.dtype, torch.float32)
        flat = act.reshape(n_rows * n_pos, -1)
        cells, cell = torch.unique(row * n_pos + position, return_inverse=True)
        x = flat[cells].to(dtype)
        sae = self.sae
        f = sae.encode(x.to(sae.dtype)).to(dtype)
        reconstruction = sae.decode(f.to(sae.dtype)).to(dtype)
        e = x - reconstruction
        number = number.to(dtype)

        on_feature = feature >= 0
        at, index = cell[on_feature], feature[on_feature]
        current = f[at, index]
        if self.baseline is None:
            base = torch.zeros_like(current)
        else:
            base = self.baseline[0][position[on_feature], index].to(dtype)
        kinds, numbers = kind[on_feature], number[on_feature]
        new = torch.where(
            kinds == _VALUE, numbers, torch.where(kinds == _SCALE, numbers * current, base)
        )
        f_new = f.index_put((at, index), new)
        delta = sae.decode(f_new.to(sae.dtype)).to(dtype) - reconstruction

        on_error = ~on_feature
        if on_error.any():
            at = cell[on_error]
            current = e[at]
            kinds, numbers = kind[on_error].unsqueeze(1), number[on_error].unsqueeze(1)
            norm = current.norm(dim=-1, keepdim=True)
            set_to = torch.where(norm > 0, current * (numbers / norm.clamp_min(1e-30)), 0.0)
            if self.baseline is None:
                base = torch.zeros_like(current)
            else:
                base = self.baseline[1][position[on_error]].to(dtype)
            new = torch.where(
                kinds == _VALUE, set_to, torch.where(kinds == _SCALE, numbers * current, base)
            )
            delta = delta.index_add(0, at, new - current)
        edited = flat.index_add(0, cells, delta.to(act.dtype))
        return edited.reshape(act.shape)
