"""The contribution graph of one step (after LLM Transparency Tool's): which earlier tokens, through which layers,
carried the logit of the token that came. Torch-free: from a trace's attention, value norms and logit attribution.

At the position p that produced the step, head h of layer l wrote a share A[l, h] of the logit (the attribution).
Its output there is Σ_j α_h[p, j] v_j W_O^h: the share is split over the source tokens j by value-weighted attention
(Kobayashi et al. 2020), α_h[p, j]·‖v_j W_O^h‖ normalised over j, so an edge from token j at layer l to position p
at layer l + 1 carries

    edge[l, j] = Σ_h A[l, h] · α_h[p, j]‖v_j W_O^h‖ / Σ_j' α_h[p, j']‖v_j' W_O^h‖,

and Σ_j edge[l, j] is the layer's heads' share. The residual stream at p carries, into layer l, the embedding's share
and every earlier layer's (its heads, their bias, its MLP): residual[l]; residual[L] + the constant is the logit.
Without value norms the split is by attention alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .trace import StepAttribution


@dataclass
class ContributionGraph:
    """One step's graph: `edges` [layers, position + 1] from each token into `position` through each layer's heads,
    `residual` [layers + 1] the share the residual stream carries into each layer at `position` (and out of the last),
    `mlp` [layers] what each layer's MLP wrote there; all in units of the logit."""

    position: int
    edges: np.ndarray
    residual: np.ndarray
    mlp: np.ndarray
    logit: float
    weighted: bool  # split by value-weighted attention (False: by attention alone, the trace has no value norms)

    def strongest(self, threshold: float) -> list[tuple[int, int, float]]:
        """The edges (layer, token, share) whose |share| is at least `threshold` × the largest |share|."""
        top = float(np.abs(self.edges).max()) if self.edges.size else 0.0
        layers, tokens = np.nonzero(np.abs(self.edges) >= threshold * top) if top else ((), ())
        return [(int(layer), int(token), float(self.edges[layer, token])) for layer, token in zip(layers, tokens)]


def contribution_graph(trace, step: int | None = None, *, position: int | None = None) -> ContributionGraph:
    """The contribution graph of generated token `step` (or of the token after `position`); see the module."""
    shares = trace.logit_attribution(step, position=position)
    p = shares.position
    n_layers, n_heads = shares.heads.shape
    edges = np.zeros((n_layers, p + 1), dtype=np.float64)
    weighted = trace.value_norms is not None
    for layer in range(n_layers):
        for head in range(n_heads):
            split = trace.attention_row(layer, head, p).astype(np.float64)
            if weighted:
                split = split * trace.value_norms[layer, head, : p + 1]
            total = split.sum()
            if total > 0:
                edges[layer] += shares.heads[layer, head] * split / total
    written = shares.heads.sum(1) + shares.attention_bias + shares.mlp  # [L]: what each layer added at p
    residual = shares.embedding + np.concatenate([[0.0], np.cumsum(written, dtype=np.float64)])
    return ContributionGraph(position=p, edges=edges.astype(np.float32), residual=residual.astype(np.float32),
                             mlp=shares.mlp.copy(), logit=shares.logit, weighted=weighted)


class AttributionAccessors:
    """A step's logit attribution and its contribution graph as methods of a Trace (`trace.logit_attribution(step)`,
    `trace.contribution_graph(step)`): Trace inherits them."""

    __slots__ = ()  # a mixin: the trace keeps its own attributes

    def logit_attribution(self, step: int | None = None, *, position: int | None = None) -> StepAttribution:
        """Each head's, each block's MLP's and the embedding's share of the logit of generated token `step` (or of
        the token after `position`, for a text read with lens="all"): `.heads` [layers, heads], `.mlp` [layers],
        ..., adding up to `.logit` (`.total`)."""
        if self.attribution is None:
            why = next((n for n in self.notes if "attribution" in n), "it was captured without a logit lens")
            raise ValueError(f"this trace has no logit attribution: {why}")
        if (step is None) == (position is None):
            raise ValueError("give a step or a position, one of them")
        if step is not None:
            if not -self.n_generated <= step < self.n_generated:
                raise IndexError(f"step {step} is out of range: the trace has {self.n_generated} generated tokens")
            position = self.steps[step].position - 1  # the position that produced it
        return self.attribution.at(position)

    def contribution_graph(self, step: int | None = None, *, position: int | None = None):
        """Which earlier tokens, through which layers, carried the logit of generated token `step` (or of the token
        after `position`): a ContributionGraph (explorer/contribution.py)."""
        return contribution_graph(self, step, position=position)
