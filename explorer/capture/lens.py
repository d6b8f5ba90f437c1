"""The logit lens and surprisal: what the residual stream after each block predicts, read out after the run.

During the run, forward hooks on the decoder blocks keep the hidden states at the positions the lens covers
(and the last block's at every prompt position, for surprisal). After it, one batched final norm + unembedding
over all layers × positions, in chunks, turns them into top-k lists and the next token's probability and rank.
Doing it inside the decoding loop would cost a decode step per layer and position (the unembedding is the
biggest matrix of a small model); batched afterwards it is a few large matrix products.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..errors import SettingsError
from ..trace import LogitLens
from .anatomy import Anatomy

LENS_MODES = ("steps", "all", None)
CHUNK_ROWS = 64  # rows of the unembedding at once: 64 × 49,152 float32 logits = 12 MB, one buffer reused
# chunk after chunk (32 rows ran slower: the lens +53 % of generate; 128 raised the peak of a 1,024-token capture)
TOPK_ROWS = 16  # rows a top-k at once: its buffers (values and int64 indices of whole rows) stay ~10 MB


def check_lens(lens, *, generating: bool) -> None:
    if lens not in LENS_MODES:
        raise SettingsError(f"lens must be 'steps', 'all' or None, not {lens!r}")
    if lens == "steps" and not generating:
        raise SettingsError("a read text has no generated steps to cover: use lens='all' (every position) or None")


class HiddenStates:
    """Collects, block by block, the hidden states of the positions the lens covers.

    `covers(start, stop)` says which positions of a forward pass over start..stop-1 to keep; the last block also
    keeps the prompt's positions when `prompt_states` is set (the prompt's surprisal needs them, and `generate`
    computes logits only at the last position). Positions count from the start of a left-padded batch: every
    row's prompt ends at n_prompt - 1. The states stay on the model's device, in its dtype, until the run is over.
    """

    def __init__(self, anatomy: Anatomy, lens: str | None, n_prompt: int, prompt_states: bool, capacity: int = 0):
        if not anatomy.found:  # nothing to read the states through: neither lens nor prompt surprisal
            lens, prompt_states = None, False
        self.anatomy, self.lens, self.n_prompt, self.prompt_states = anatomy, lens, n_prompt, prompt_states
        self.n_layers = len(anatomy.blocks) if anatomy.found else 0
        self.seen = [0] * self.n_layers
        # the covered rows of every block in one tensor [layers, batch, capacity, d], allocated at the first pass: a
        # small tensor kept per block and step lands between the passes' temporaries and fragments the heap
        # (peaks of +200 MB on a 1,024-token prompt, one run in three)
        self.capacity = capacity
        self.kept: torch.Tensor | None = None
        self.filled = [0] * self.n_layers
        self.positions: list[int] = []
        self.prompt: torch.Tensor | None = None
        self.paused = False  # set for the pass that reads the last token, which predicts no step
        self.reread = False  # set when the model read the whole text again at a step: positions are not followed

    def covered(self, start: int, stop: int) -> range:
        """The positions of a pass over start..stop-1 to keep. For "steps" these are n_prompt-1 onwards: the
        positions that produced a generated token (`generate` never feeds its last token back)."""
        if self.lens == "all":
            return range(start, stop)
        if self.lens == "steps" and not self.paused:
            return range(max(start, self.n_prompt - 1), stop)
        return range(0)

    def record(self, layer: int, hidden: torch.Tensor) -> None:
        """Keep what the lens covers of block `layer`'s output [batch, new, d]."""
        new = hidden.shape[1]
        start = self.seen[layer]
        if start and new > 1 and self.lens != "all":  # the whole text again: a model without a KV cache (MPT)
            self.lens, self.prompt_states, self.reread = None, False, True
            return
        self.seen[layer] = start + new
        keep = self.covered(start, start + new)
        if len(keep):  # copied: a view would keep the whole pass's output alive (70 MB for a 1,024-token prompt)
            rows = hidden[:, keep.start - start : keep.stop - start].detach()
            at, n = self.filled[layer], rows.shape[1]
            if self.kept is None or at + n > self.kept.shape[2]:
                self._grow(at + n, rows)
            self.kept[layer, :, at : at + n] = rows
            self.filled[layer] = at + n
            if layer == 0:
                self.positions.extend(keep)
        if self.prompt_states and layer == self.n_layers - 1 and start == 0:
            self.prompt = hidden.detach().clone()  # [batch, n_prompt, d]; the model may reuse its output buffer

    @contextmanager
    def hooked(self):
        """Hook the decoder blocks for the run (none when neither a lens nor the prompt's states are wanted)."""
        handles = []
        try:
            blocks = self.anatomy.blocks if self.lens is not None or self.prompt_states else []
            for i, block in enumerate(blocks):
                handles.append(block.register_forward_hook(self._hook(i)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, layer: int):
        def hook(_module, _args, output):
            self.record(layer, output[0] if isinstance(output, tuple) else output)

        return hook

    def _grow(self, needed: int, rows: torch.Tensor) -> None:
        """Room for `needed` rows a block: the announced capacity, or twice what is needed beyond it (a copy)."""
        size = max(self.capacity, needed) if self.kept is None else 2 * needed
        grown = torch.empty((self.n_layers, rows.shape[0], size, rows.shape[-1]), dtype=rows.dtype, device=rows.device)
        if self.kept is not None:
            grown[:, :, : self.kept.shape[2]] = self.kept
        self.kept = grown

    def states(self, row: int = 0) -> torch.Tensor:
        """[layers, positions, d] of batch row `row`, at `self.positions`"""
        if len(set(self.filled)) != 1:
            raise RuntimeError(f"the blocks kept different numbers of positions: {self.filled}")
        return self.kept[:, row, : self.filled[0]]


def _logits(model, normed: torch.Tensor, out: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """The unembedding of already-normed states, with the model's final soft-cap where it has one, float32; written
    into `out` (rows × vocabulary) when given, so that chunk after chunk reuses one buffer instead of allocating."""
    head = model.get_output_embeddings()
    if out is not None and normed.dtype == head.weight.dtype == torch.float32 and getattr(head, "bias", None) is None:
        logits = torch.matmul(normed, head.weight.t(), out=out[: len(normed)])
    else:
        logits = head(normed.to(head.weight.dtype)).float()
    if scale != 1.0:
        logits.mul_(scale)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits.div_(cap).tanh_().mul_(cap) if cap else logits


def final_logits(model, states: torch.Tensor, anatomy: Anatomy) -> torch.Tensor:
    """The model's output logits [n, vocabulary] at states [n, d] of the last block (before the final norm)."""
    return _logits(model, anatomy.final(states.to(model.dtype)), scale=anatomy.logit_scale)


def _log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp of each row, [n, 1]; overwrites `logits` (its exponentials, in place: no second buffer)."""
    top = logits.max(dim=-1, keepdim=True).values
    return top + logits.sub_(top).exp_().sum(dim=-1, keepdim=True).log_()


def _chunks(model, anatomy: Anatomy, states: torch.Tensor, rows: int):
    """(start, stop, logits) over `states` [n, d] (last-block outputs before the final norm), `rows` at a time,
    each chunk's logits in the same buffer: a 1,024-token prompt's 32 chunks allocate it once."""
    norm, buffer = anatomy.final, None
    vocab = model.get_output_embeddings().weight.shape[0]
    for start in range(0, len(states), rows):
        stop = min(start + rows, len(states))
        if buffer is None:
            buffer = torch.empty((min(rows, len(states)), vocab), dtype=torch.float32, device=states.device)
        yield start, stop, _logits(model, norm(states[start:stop].to(model.dtype)), buffer, anatomy.logit_scale)


def next_token_log_probs(model, anatomy: Anatomy, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """ln p(targets[i]) under the model's output at states[i] ([n, d], the last block's output), float32 [n]."""
    out = torch.empty(len(states), dtype=torch.float32, device=states.device)
    for start, stop, logits in _chunks(model, anatomy, states, CHUNK_ROWS):
        chosen = logits.gather(1, targets[start:stop, None])
        out[start:stop] = (chosen - _log_normaliser(logits))[:, 0]
    return out


def build_lens(model, anatomy: Anatomy, states: torch.Tensor, positions: list[int], token_ids: list[int], k: int,
               decode, progress=None) -> LogitLens:
    """The lens of `states` [L, P, d] (block outputs before the final norm) at `positions`: top-k, and the
    probability and rank of the token at position + 1, by one batched norm + unembedding in chunks."""
    n_layers, n_pos, _ = states.shape
    k = min(k, model.get_output_embeddings().weight.shape[0])
    ends = torch.tensor([p + 1 >= len(token_ids) for p in positions], device=states.device)
    nxt = torch.tensor([token_ids[p + 1] if p + 1 < len(token_ids) else 0 for p in positions], device=states.device)
    flat = states.reshape(n_layers * n_pos, -1)
    targets = nxt.repeat(n_layers)
    top_ids = torch.empty((len(flat), k), dtype=torch.int64, device=states.device)
    top_probs = torch.empty((len(flat), k), dtype=torch.float32, device=states.device)
    next_prob = torch.empty(len(flat), dtype=torch.float32, device=states.device)
    next_rank = torch.empty(len(flat), dtype=torch.int64, device=states.device)
    above = None  # one boolean buffer for the rank's comparison, reused chunk after chunk
    for start, stop, logits in _chunks(model, anatomy, flat, CHUNK_ROWS):
        top_logits = torch.empty((stop - start, k), dtype=torch.float32, device=logits.device)
        for at in range(0, stop - start, TOPK_ROWS):  # topk's own buffers grow with its rows × vocabulary
            top_logits[at : at + TOPK_ROWS], top_ids[start + at : start + at + TOPK_ROWS] = torch.topk(
                logits[at : at + TOPK_ROWS], k)  # the order of the logits is that of the probabilities
        chosen = logits.gather(1, targets[start:stop, None])
        if above is None:
            above = torch.empty(logits.shape, dtype=torch.bool, device=logits.device)
        torch.gt(logits, chosen, out=above[: stop - start])
        next_rank[start:stop] = above[: stop - start].sum(-1) + 1  # ranked by logits, as the steps are
        normaliser = _log_normaliser(logits)  # overwrites the logits: last
        top_probs[start:stop] = (top_logits - normaliser).exp_()
        next_prob[start:stop] = (chosen - normaliser).exp_()[:, 0]
        if progress is not None:
            progress(stop, len(flat))
    shape = (n_layers, n_pos)
    next_prob = next_prob.reshape(shape).cpu().numpy()
    next_rank = next_rank.reshape(shape).cpu().numpy().astype(np.int32)
    end = ends.cpu().numpy()
    next_prob[:, end], next_rank[:, end] = np.nan, 0
    ids = top_ids.reshape(shape + (k,)).cpu().numpy().astype(np.int32)
    return LogitLens(
        positions=np.asarray(positions, dtype=np.int32),
        top_ids=ids,
        top_probs=top_probs.reshape(shape + (k,)).cpu().numpy(),
        next_prob=next_prob.astype(np.float32),
        next_rank=next_rank,
        words={int(i): decode(int(i)) for i in np.unique(ids)},
    )
