"""The logit lens and surprisal: what the residual stream after each block predicts, read out after the run.

During the run, forward hooks on the decoder blocks keep the hidden states at the positions the lens covers
(and the last block's at every prompt position, for surprisal). After it, one batched final norm + unembedding
over all layers × positions, in tiles (a group of rows against a block of the vocabulary), turns them into top-k
lists and the next token's probability and rank, in float32 like the model's own output. Doing it inside the
decoding loop would cost a decode step per layer and position (the unembedding is the biggest matrix of a small
model); batched afterwards it is a few large matrix products, which are most of its cost.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..errors import SettingsError
from ..trace import LogitLens
from .anatomy import Anatomy

LENS_MODES = ("steps", "all", None)
CHUNK_ROWS = 64  # rows of the unembedding at once where it is not read block by block (a head that is not a plain
# float32 nn.Linear): 64 × 49,152 float32 logits = 12 MB, one buffer reused chunk after chunk
TOPK_ROWS = 16  # rows of such a chunk a top-k at once: its buffers (values and int64 indices of whole rows) stay small
GROUP_ROWS = 2048  # rows read against one sweep over the unembedding's vocabulary blocks
TILE_FLOATS = 1 << 21  # logits of one tile (rows × a block of the vocabulary): 8 MB float32, one buffer reused
BLOCK_MIN = 256  # the narrowest vocabulary block


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


def _finish(model, logits: torch.Tensor, scale: float) -> torch.Tensor:
    """The model's constant logit scale and final soft-cap, in place, on float32 logits."""
    if scale != 1.0:
        logits.mul_(scale)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits.div_(cap).tanh_().mul_(cap) if cap else logits


def _logits(model, normed: torch.Tensor, out: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """The unembedding of already-normed states, with the model's final soft-cap where it has one, float32; written
    into `out` (rows × vocabulary) when given, so that chunk after chunk reuses one buffer instead of allocating."""
    head = model.get_output_embeddings()
    if out is not None and normed.dtype == head.weight.dtype == torch.float32 and getattr(head, "bias", None) is None:
        logits = torch.matmul(normed, head.weight.t(), out=out[: len(normed)])
    else:
        logits = head(normed.to(head.weight.dtype)).float()
    return _finish(model, logits, scale)


def final_logits(model, states: torch.Tensor, anatomy: Anatomy) -> torch.Tensor:
    """The model's output logits [n, vocabulary] at states [n, d] of the last block (before the final norm)."""
    return _logits(model, anatomy.final(states.to(model.dtype)), scale=anatomy.logit_scale)


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


def _plain_head(model, states: torch.Tensor) -> torch.nn.Linear | None:
    """lm_head when the unembedding can be read a block of the vocabulary at a time: a plain float32 nn.Linear
    (logits = x·Wᵀ + b) on float32 states; None otherwise (a subclass may compute something else)."""
    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear and head.weight.dtype == torch.float32 and model.dtype == torch.float32 \
            and states.dtype == torch.float32:
        return head
    return None


def _block_logits(model, head: torch.nn.Linear, normed: torch.Tensor, v0: int, v1: int, out: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """Logits of vocabulary ids v0..v1-1 of normed rows [g, d], float32, written into `out` [g, v1 - v0]."""
    weight = head.weight[v0:v1].t()
    if head.bias is None:
        logits = torch.matmul(normed, weight, out=out)
    else:
        logits = torch.addmm(head.bias[v0:v1], normed, weight, out=out)
    return _finish(model, logits, scale)


def _target_logits(model, head: torch.nn.Linear, normed: torch.Tensor, targets: torch.Tensor,
                   scale: float) -> torch.Tensor:
    """Row i's logit of targets[i], [g], by one dot product a row (its rounding may differ from the blocks' matrix
    product in the last bits: what the rank counts against; the reported probability uses the product's own)."""
    out = torch.empty(len(normed), dtype=torch.float32, device=normed.device)
    for at in range(0, len(normed), 256):  # the gathered rows of the unembedding stay ~0.6 MB
        rows = slice(at, at + 256)
        weight = head.weight[targets[rows]]
        out[rows] = torch.bmm(normed[rows, None, :], weight[:, :, None])[:, 0, 0]
        if head.bias is not None:
            out[rows] += head.bias[targets[rows]]
    return _finish(model, out, scale)


class _Rows:
    """Running statistics of a group of rows over the vocabulary, fed one tile (rows × block of ids) at a time:
    the log-normaliser, the logit of each row's target, how many logits are above `reference` (the target's
    logit as the rank counts it), and the k largest logits with their ids."""

    def __init__(self, targets: torch.Tensor, k: int, rank: bool, reference: torch.Tensor | None = None):
        g, device = len(targets), targets.device
        self.targets, self.k, self.reference = targets, k, reference
        self.chosen = torch.zeros(g, dtype=torch.float32, device=device)
        self.above = torch.zeros(g, dtype=torch.int64, device=device) if rank else None
        self.values: torch.Tensor | None = None  # [g, up to k] the largest logits so far, largest first
        self.ids: torch.Tensor | None = None
        self.normaliser: torch.Tensor | None = None

    def add(self, v0: int, tile: torch.Tensor) -> None:
        """Logits of ids v0..v0 + width - 1; `tile` is overwritten (its exponentials)."""
        width = tile.shape[1]
        at = self.targets - v0  # the targets in this block (a gather and a select: no sync on a GPU)
        inside = (at >= 0) & (at < width)
        self.chosen = torch.where(inside, tile.gather(1, at.clamp(0, width - 1)[:, None])[:, 0], self.chosen)
        if self.above is not None:  # a whole row in one tile ranks against its own logit
            reference = self.chosen if self.reference is None else self.reference
            self.above += (tile > reference[:, None]).sum(-1, dtype=torch.int32)
        top = tile.amax(dim=-1, keepdim=True)
        if self.k:
            self._top_k(v0, tile, top[:, 0])
        normaliser = top[:, 0] + tile.sub_(top).exp_().sum(dim=-1).log_()  # overwrites the tile: last
        self.normaliser = normaliser if self.normaliser is None else torch.logaddexp(self.normaliser, normaliser)

    def _top_k(self, v0: int, tile: torch.Tensor, top: torch.Tensor) -> None:
        """Merge the tile's largest logits into the rows' lists, only in rows where the tile's maximum beats the
        k-th so far: ids are roughly in order of frequency, so after the first block few rows have a new
        candidate (3 % of SmolLM2's tiles), and a top-k of every row of every tile took 0.09 s of 0.67 s."""
        if self.values is None or self.values.shape[1] < self.k:
            rows = None
        else:
            rows = (top > self.values[:, -1]).nonzero()[:, 0]
            if not len(rows):
                return
        part = tile if rows is None else tile[rows]
        values, ids = torch.topk(part, min(self.k, tile.shape[1]))
        ids.add_(v0)
        if self.values is None:
            self.values, self.ids = values, ids
            return
        kept_values, kept_ids = (self.values, self.ids) if rows is None else (self.values[rows], self.ids[rows])
        merged = torch.cat([kept_values, values], dim=1)
        values, at = torch.topk(merged, min(self.k, merged.shape[1]))
        ids = torch.cat([kept_ids, ids], dim=1).gather(1, at)
        if rows is None:
            self.values, self.ids = values, ids
        else:
            self.values[rows], self.ids[rows] = values, ids

    def finish(self):
        """(log-normaliser [g], target logit [g], count above it [g] or None, top logits [g, k], their ids)."""
        if self.above is not None and self.reference is not None:  # the target itself, if its block put it above
            self.above -= (self.chosen > self.reference).long()
        return self.normaliser, self.chosen, self.above, self.values, self.ids


def row_stats(model, anatomy: Anatomy, states: torch.Tensor, targets: torch.Tensor, k: int, rank: bool,
              progress=None, tile_floats: int | None = None, group_rows: int | None = None):
    """Over the final norm + unembedding of `states` [n, d] (last-block outputs before the final norm): each row's
    log-normaliser (logsumexp), its logit of targets[i], how many of its logits are above that one (rank=True)
    and its k largest logits with their ids, all float32 / int64 [n] or [n, k].

    A plain float32 lm_head is read in tiles: up to GROUP_ROWS rows against one block of the vocabulary at a time,
    the block kept in cache while all the rows use it (a 64-row chunk against the whole 113 MB unembedding of
    SmolLM2 streamed it from memory for every chunk: twice the time of the product itself). Any other head is read
    in chunks of CHUNK_ROWS rows against the whole vocabulary. `tile_floats` and `group_rows` override
    TILE_FLOATS and GROUP_ROWS (read at the call: tests change them)."""
    n, device = len(states), states.device
    tile_floats, group_rows = tile_floats or TILE_FLOATS, group_rows or GROUP_ROWS
    normaliser = torch.empty(n, dtype=torch.float32, device=device)
    chosen = torch.empty(n, dtype=torch.float32, device=device)
    above = torch.empty(n, dtype=torch.int64, device=device) if rank else None
    top_logits = torch.empty((n, k), dtype=torch.float32, device=device)
    top_ids = torch.empty((n, k), dtype=torch.int64, device=device)

    def keep(start: int, stop: int, rows: _Rows) -> None:
        normaliser[start:stop], chosen[start:stop], counted, values, ids = rows.finish()
        if rank:
            above[start:stop] = counted
        if k:
            top_logits[start:stop], top_ids[start:stop] = values, ids

    head = _plain_head(model, states)
    if head is None or n == 0:
        for start, stop, logits in _chunks(model, anatomy, states, CHUNK_ROWS):
            for at in range(start, stop, TOPK_ROWS):
                rows = _Rows(targets[at : min(at + TOPK_ROWS, stop)], k, rank)
                rows.add(0, logits[at - start : at - start + TOPK_ROWS])
                keep(at, min(at + TOPK_ROWS, stop), rows)
            if progress is not None:
                progress(stop, n)
        return normaliser, chosen, above, top_logits, top_ids
    vocab = head.weight.shape[0]
    group = min(n, group_rows)
    block = min(vocab, max(BLOCK_MIN, tile_floats // max(group, 1) // 64 * 64))
    buffer = torch.empty(group * block, dtype=torch.float32, device=device)
    for start in range(0, n, group):
        stop = min(start + group, n)
        normed = anatomy.final(states[start:stop])
        reference = _target_logits(model, head, normed, targets[start:stop], anatomy.logit_scale) if rank else None
        rows = _Rows(targets[start:stop], k, rank, reference)
        for v0 in range(0, vocab, block):
            v1 = min(v0 + block, vocab)
            out = buffer[: (stop - start) * (v1 - v0)].view(stop - start, v1 - v0)
            rows.add(v0, _block_logits(model, head, normed, v0, v1, out, anatomy.logit_scale))
            if progress is not None:
                progress(start + (stop - start) * v1 // vocab, n)
        keep(start, stop, rows)
    return normaliser, chosen, above, top_logits, top_ids


def next_token_log_probs(model, anatomy: Anatomy, states: torch.Tensor, targets: torch.Tensor,
                         tiles: dict | None = None) -> torch.Tensor:
    """ln p(targets[i]) under the model's output at states[i] ([n, d], the last block's output), float32 [n];
    `tiles`: row_stats's tile_floats and group_rows, where not the defaults."""
    normaliser, chosen, _, _, _ = row_stats(model, anatomy, states, targets, 0, rank=False, **(tiles or {}))
    return chosen - normaliser


def build_lens(model, anatomy: Anatomy, states: torch.Tensor, positions: list[int], token_ids: list[int], k: int,
               decode, progress=None) -> LogitLens:
    """The lens of `states` [L, P, d] (block outputs before the final norm) at `positions`: top-k, and the
    probability and rank of the token at position + 1, by one batched norm + unembedding in tiles."""
    return build_lenses(model, anatomy, [(states, positions, token_ids)], k, decode, progress)[0]


def build_lenses(model, anatomy: Anatomy, parts: list[tuple[torch.Tensor, list[int], list[int]]], k: int,
                 decode, progress=None, stats=None) -> list[LogitLens]:
    """The lens of each (states [L, P, d], positions, token_ids) of `parts` (the rows of a batch), all read
    through one pass over the unembedding: a row's own lens is a few hundred rows against the whole vocabulary,
    and a batch's rows share every tile of it. `stats`: the rows' `row_stats` (k columns, with ranks), already
    read (by lens_ahead.LensAhead), in this function's order of rows: layer after layer, the parts' positions."""
    n_layers = parts[0][0].shape[0]
    k = min(k, model.get_output_embeddings().weight.shape[0])
    device = parts[0][0].device
    widths = [len(positions) for _, positions, _ in parts]
    ends = [p + 1 >= len(ids) for _, positions, ids in parts for p in positions]
    nxt = torch.tensor([ids[p + 1] if p + 1 < len(ids) else 0 for _, positions, ids in parts for p in positions],
                       dtype=torch.long, device=device)
    states = parts[0][0] if len(parts) == 1 else torch.cat([s for s, _, _ in parts], dim=1)
    n_pos = states.shape[1]
    flat = states.reshape(n_layers * n_pos, -1)
    targets = nxt.repeat(n_layers)
    if stats is None:
        stats = row_stats(model, anatomy, flat, targets, k, rank=True, progress=progress)
    normaliser, chosen, above, top_logits, top_ids = stats
    top_probs = top_logits.sub_(normaliser[:, None]).exp_()  # the order of the logits is that of the probabilities
    next_prob = chosen.sub_(normaliser).exp_()
    next_rank = above.add_(1)  # ranked by logits, as the steps are
    shape = (n_layers, n_pos)
    next_prob = next_prob.reshape(shape).cpu().numpy().astype(np.float32)
    next_rank = next_rank.reshape(shape).cpu().numpy().astype(np.int32)
    end = np.asarray(ends, dtype=bool)
    next_prob[:, end], next_rank[:, end] = np.nan, 0
    ids = top_ids.reshape(shape + (k,)).cpu().numpy().astype(np.int32)
    probs = top_probs.reshape(shape + (k,)).cpu().numpy()
    words = {int(i): decode(int(i)) for i in np.unique(ids)}
    lenses, at = [], 0
    for (_, positions, _), width in zip(parts, widths):
        own = slice(at, at + width)
        at += width
        row_ids = np.ascontiguousarray(ids[:, own])
        lenses.append(LogitLens(
            positions=np.asarray(positions, dtype=np.int32),
            top_ids=row_ids,
            top_probs=np.ascontiguousarray(probs[:, own]),
            next_prob=np.ascontiguousarray(next_prob[:, own]),
            next_rank=np.ascontiguousarray(next_rank[:, own]),
            words={int(i): words[int(i)] for i in np.unique(row_ids)},
        ))
    return lenses
