"""Direct logit attribution: how much each head, each layer's MLP and the embedding wrote of the logit of the token
that came next (nostalgebraist 2020; Elhage et al. 2021; LLM Transparency Tool's per-head contributions).

At a position p whose next token is t, the model's logit of t is scale · (lm_head(final_norm(h[p]))[t]), h being
the last block's output. With the final norm's scale frozen at its value for h[p] (the RMS of h[p], or its
standard deviation), the norm is linear, and so is the logit: it is u_p · h[p] + c_p for one direction u_p and one
constant c_p. The residual stream h[p] is the sum of what was written to it:

    h[p] = e[p] + Σ_layers ( Σ_heads z_lh[p] W_O^lh  +  b_O^l  +  rest_l[p] )

e the first block's input (token and learned position embeddings), z_lh head h's input to the output projection of
layer l (its attention-weighted values), W_O^lh that head's rows of the projection, b_O^l its bias, and rest_l
everything else block l adds (its MLP; in a model that normalises the attention output before adding it, that
norm's change too). Each part dotted with u_p is its share of the logit, and the shares add up to the logit.

What is kept during the run, at the positions the logit lens covers and on the model's device: every layer's
output-projection input and the first block's input. The block outputs are the lens's own. The shares are
computed after the run, with the lens.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..errors import CaptureError
from ..trace import LogitAttribution
from .anatomy import Anatomy
from .attention import _output_projection_module, attention_modules, model_heads


def _projections(anatomy: Anatomy, model) -> list[tuple[torch.nn.Module, int]] | None:
    """The attention output projection of each block and its number of heads, in order; None when a block has none
    or several."""
    inside = {id(m): i for i, block in enumerate(anatomy.blocks) for m in block.modules()}
    by_block: dict[int, list[tuple[torch.nn.Module, int]]] = {}
    for attention in attention_modules(model):
        block = inside.get(id(attention))
        projection = _output_projection_module(attention)
        if block is not None and projection is not None:
            try:
                by_block.setdefault(block, []).append((projection, model_heads(attention)))
            except CaptureError:
                return None
    if any(len(by_block.get(i, ())) != 1 for i in range(len(anatomy.blocks))):
        return None
    return [by_block[i][0] for i in range(len(anatomy.blocks))]


def _weight(projection: torch.nn.Module) -> torch.Tensor:
    """W_O as [heads·d, hidden] (GPT-2's Conv1D keeps it that way; nn.Linear keeps its transpose)."""
    return projection.weight if type(projection).__name__ == "Conv1D" else projection.weight.T


class Writers:
    """Keeps, at the positions `hidden` (the lens's HiddenStates) covers, what each layer's output projection reads
    (the merged heads [batch, new, H·d]) and what the first block reads (the embedded tokens), in buffers on the
    model's device, so that the shares of the logit can be computed after the run."""

    def __init__(self, model, hidden):
        self.hidden = hidden
        self.problem: str | None = None
        self.projections = None
        if hidden.lens is None or not hidden.anatomy.found:
            self.problem = "no logit lens"
        else:
            self.projections = _projections(hidden.anatomy, model)
            if self.projections is None:
                self.problem = "the attention output projection of every block could not be found"
        n = len(self.projections or ())
        self.seen, self.filled = [0] * n, [0] * n
        self.heads: torch.Tensor | None = None  # [layers, batch, capacity, H·d]
        self.embedded: torch.Tensor | None = None  # [batch, capacity, d]
        self.embedded_seen = self.embedded_filled = 0

    @property
    def active(self) -> bool:
        return self.problem is None

    def _rows(self, seen: int, x: torch.Tensor):
        """The covered rows of a pass over seen..seen+new-1 of x [batch, new, ·]; None when none is covered."""
        new = x.shape[1]
        if self.hidden.reread:
            return None
        keep = self.hidden.covered(seen, seen + new)
        return x[:, keep.start - seen : keep.stop - seen].detach() if len(keep) else None

    def _grow(self, buffer: torch.Tensor | None, needed: int, rows: torch.Tensor, layers: int | None):
        size = max(self.hidden.capacity, needed) if buffer is None else 2 * needed
        shape = (rows.shape[0], size, rows.shape[-1])
        grown = torch.empty(((layers,) if layers else ()) + shape, dtype=rows.dtype, device=rows.device)
        if buffer is not None:
            grown[..., : buffer.shape[-2], :] = buffer
        return grown

    def record_heads(self, layer: int, merged: torch.Tensor) -> None:
        rows = self._rows(self.seen[layer], merged)
        self.seen[layer] += merged.shape[1]
        if rows is None:
            return
        at, n = self.filled[layer], rows.shape[1]
        if self.heads is None or at + n > self.heads.shape[2]:
            self.heads = self._grow(self.heads, at + n, rows, len(self.projections))
        self.heads[layer, :, at : at + n] = rows
        self.filled[layer] = at + n

    def record_embedded(self, x: torch.Tensor) -> None:
        rows = self._rows(self.embedded_seen, x)
        self.embedded_seen += x.shape[1]
        if rows is None:
            return
        at, n = self.embedded_filled, rows.shape[1]
        if self.embedded is None or at + n > self.embedded.shape[1]:
            self.embedded = self._grow(self.embedded, at + n, rows, None)
        self.embedded[:, at : at + n] = rows
        self.embedded_filled = at + n

    @contextmanager
    def hooked(self):
        handles = []
        try:
            if self.active:
                for i, (projection, _) in enumerate(self.projections):
                    handles.append(projection.register_forward_pre_hook(
                        lambda _m, args, i=i: self.record_heads(i, args[0])))
                handles.append(self.hidden.anatomy.blocks[0].register_forward_pre_hook(self._embedded_hook,
                                                                                       with_kwargs=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _embedded_hook(self, _module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor):
            self.record_embedded(x)


def _frozen_norm(norm: torch.nn.Module, h: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor | None] | None:
    """The final norm at rows h [P, d] as ("rms", gain [P, d], None): norm(x) ≈ gain ⊙ x with the scale frozen,
    or ("layer", gain [P, d], bias [d]): norm(x) ≈ gain ⊙ (x − mean x) + bias; None for another kind of module.
    The kind is told by what the module computes, checked on h itself."""
    if isinstance(norm, torch.nn.Identity):
        return "rms", torch.ones_like(h), None
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != h.shape[-1:]:
        return None
    eps = next((float(getattr(norm, name)) for name in ("eps", "variance_epsilon", "epsilon")
                if isinstance(getattr(norm, name, None), (int, float))), 1e-5)
    want = norm(h.to(weight.device, weight.dtype)).float().to(h.device)
    w = weight.float().to(h.device)
    bias = getattr(norm, "bias", None)
    rms = h.pow(2).mean(-1, keepdim=True).add(eps).rsqrt()
    centred = h - h.mean(-1, keepdim=True)
    std = centred.pow(2).mean(-1, keepdim=True).add(eps).rsqrt()
    candidates = [("rms", w * rms, None), ("rms", (1 + w) * rms, None)]  # Gemma keeps its gain as weight - 1
    candidates.append(("layer", w * std, bias.float().to(h.device) if isinstance(bias, torch.Tensor) else None))
    for kind, gain, b in candidates:
        got = gain * (centred if kind == "layer" else h) + (b if b is not None else 0)
        if torch.allclose(got, want, atol=1e-4 * float(want.abs().max().clamp(min=1)), rtol=1e-3):
            return kind, gain, b
    return None


def attribute(model, anatomy: Anatomy, writers: Writers, states: torch.Tensor, embedded: torch.Tensor,
              heads: torch.Tensor, positions: list[int], token_ids: list[int]) -> LogitAttribution | str:
    """The shares of the logit of the next token at each of `positions` (those with a next token): `states`
    [L, P, d] the block outputs there, `embedded` [P, d] the first block's input, `heads` [L, P, H·d] each output
    projection's input. A sentence instead where the final norm cannot be frozen."""
    at = [i for i, p in enumerate(positions) if p + 1 < len(token_ids)]
    if not at:
        return "no position with a next token"
    device = states.device  # where the kept states are; weights of layers on other devices are brought here

    def here(t: torch.Tensor) -> torch.Tensor:
        return t.float().to(device)

    index = torch.tensor(at, device=device)
    states, embedded, heads = states[:, index].float(), here(embedded[index.to(embedded.device)]), \
        here(heads[:, index.to(heads.device)])
    targets = torch.tensor([token_ids[positions[i] + 1] for i in at], device=device)
    last = states[-1]
    norm, after = anatomy.final, []
    if isinstance(norm, torch.nn.Sequential):  # a norm, then linear maps (OPT's project_out)
        norm, after = norm[0], list(norm)[1:]
        if not all(type(m) is torch.nn.Linear for m in after):
            return "its final norm is followed by more than linear maps"
    frozen = _frozen_norm(norm, last)
    if frozen is None:
        return f"its final norm ({type(norm).__name__}) is not an RMS or layer norm whose scale can be frozen"
    kind, gain, bias = frozen
    head = model.get_output_embeddings()
    unembedding = here(head.weight[targets.to(head.weight.device)])  # [P, d]: the rows of the next tokens
    rows = unembedding
    constant = torch.zeros(len(at), device=device)
    if getattr(head, "bias", None) is not None:
        constant += here(head.bias[targets.to(head.bias.device)])
    bias_of_head = constant.clone()
    for linear in reversed(after):  # row · (A y + b) = (row A) · y + row · b
        if linear.bias is not None:
            constant += rows @ here(linear.bias)
        rows = rows @ here(linear.weight)
    u = gain * rows
    if kind == "layer":
        u = u - u.mean(-1, keepdim=True)  # (x − mean x)·w = x·(w − mean w)
    if bias is not None:
        constant += rows @ bias
    scale = anatomy.logit_scale
    u, constant = u * scale, constant * scale
    head_shares, bias_shares = [], []
    for layer, (projection, n_heads) in enumerate(writers.projections):
        weight = here(_weight(projection))  # [H·d, hidden]
        merged = heads[layer]  # [P, H·d]
        per_head = (merged * (u @ weight.T)).reshape(len(at), n_heads, -1).sum(-1)  # [P, H]
        head_shares.append(per_head)
        b = getattr(projection, "bias", None)
        bias_shares.append(u @ here(b) if isinstance(b, torch.Tensor) else torch.zeros(len(at), device=device))
    heads_out = torch.stack(head_shares, dim=1)  # [P, L, H]
    bias_out = torch.stack(bias_shares, dim=1)  # [P, L]
    before = torch.cat([embedded[None], states[:-1]])  # [L, P, d]: each block's input
    written = ((states - before) * u[None]).sum(-1).T  # [P, L]: what each block added, dotted with u
    embedding = (embedded * u).sum(-1)
    rest = written - heads_out.sum(-1) - bias_out
    with torch.no_grad():  # the model's own logit of the next token (before any final soft-cap), for the check
        first = next(anatomy.final.parameters(), head.weight)  # the final norm's device (a multi-device model)
        normed = here(anatomy.final(last.to(first.device, model.dtype)))
        logit = ((normed * unembedding).sum(-1) + bias_of_head) * scale  # the rows only: not P x vocabulary
    return LogitAttribution(
        positions=np.asarray([positions[i] for i in at], dtype=np.int32),
        heads=heads_out.cpu().numpy().astype(np.float32),
        attention_bias=bias_out.cpu().numpy().astype(np.float32),
        mlp=rest.cpu().numpy().astype(np.float32),
        embedding=embedding.cpu().numpy().astype(np.float32),
        constant=constant.cpu().numpy().astype(np.float32),
        logit=logit.cpu().numpy().astype(np.float32),
    )

