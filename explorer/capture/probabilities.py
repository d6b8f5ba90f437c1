"""Per-step probabilities: the model's own distribution (softmax of the raw logits) and the one sampled from.

Each step's two distributions over the vocabulary are reduced, on the model's device, to what a Step keeps (top-k,
entropy, and once the token is known its probability and rank) as soon as they exist: no step's full logits are
kept for later (20 steps of 8 rows are 60 MB of fresh memory, whose first touch alone cost 0.04 s of 1.6 s)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from ..trace import Candidate, Step


def _summary(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities [n, V], log-probabilities [n, V], entropy [n] (nats) and top-k of softmax over each row of
    float32 logits; -inf logits get probability 0 (and add 0 to the entropy)."""
    probs = torch.softmax(logits, dim=-1)
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = -(probs * log_probs.clamp(min=torch.finfo(log_probs.dtype).min)).sum(dim=-1)
    top = torch.topk(probs, min(k, logits.shape[-1]))
    return probs, log_probs, entropy, top


class StepStats:
    """What the Steps of a generation keep, step by step, for every batch row: `add(logits, scores)` with a
    step's raw logits and the scores sampled from ([rows, V] each), then `choose(tokens)` once its tokens are
    known. Everything stays on the device until `host()`, after the run."""

    NAMES = ("entropy", "top_p", "top_i", "sampling_entropy", "sampling_top_p", "sampling_top_i",
             "prob", "rank", "sampling_prob", "log_prob")

    def __init__(self, k: int):
        self.k = k
        self.parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.NAMES}
        self.pending: tuple | None = None  # (logits, probs, log_probs, sampling probs) of the step not chosen yet

    def add(self, logits: torch.Tensor, scores: torch.Tensor) -> None:
        logits = logits.float()
        probs, log_probs, entropy, (top_p, top_i) = _summary(logits, self.k)
        if scores is logits:  # nothing changed the distribution: the same numbers
            sampling_probs, sampling_entropy, sampling_top_p, sampling_top_i = probs, entropy, top_p, top_i
        else:
            sampling_probs, _, sampling_entropy, (sampling_top_p, sampling_top_i) = _summary(scores.float(), self.k)
        for name, value in (("entropy", entropy), ("top_p", top_p), ("top_i", top_i),
                            ("sampling_entropy", sampling_entropy), ("sampling_top_p", sampling_top_p),
                            ("sampling_top_i", sampling_top_i)):
            self.parts[name].append(value)
        self.pending = (logits, probs, log_probs, sampling_probs)

    def choose(self, tokens: torch.Tensor) -> None:
        """The tokens [rows] drawn at the step last added: their probabilities and ranks."""
        if self.pending is None:
            return
        logits, probs, log_probs, sampling_probs = self.pending
        self.pending = None
        at = tokens.to(logits.device, torch.long)[:, None]
        chosen = logits.gather(1, at)
        self.parts["prob"].append(probs.gather(1, at)[:, 0])
        self.parts["rank"].append((logits > chosen).sum(dim=-1) + 1)
        self.parts["sampling_prob"].append(sampling_probs.gather(1, at)[:, 0])
        self.parts["log_prob"].append(log_probs.gather(1, at)[:, 0])

    def host(self) -> dict[str, np.ndarray]:
        """Every kept part as a numpy array [steps, rows, ...]: the one device→host copy."""
        return {name: torch.stack(values).cpu().numpy() if values else np.zeros((0, 0)) for name, values
                in self.parts.items()}


class StepRecorder(LogitsProcessor):
    """Feeds StepStats from inside `generate`: a forward hook on the model gives each step's raw logits (those
    `generate` itself hands its processors), and as the last logits processor it sees the scores sampled from;
    the input ids of the next step say which token the previous one drew. Returns the scores unchanged."""

    def __init__(self, k: int):
        self.stats = StepStats(k)
        self.logits: torch.Tensor | None = None

    def hook(self, _module, _args, output) -> None:
        logits = output.logits if hasattr(output, "logits") else output[0]
        if logits.shape[1]:
            self.logits = logits[:, -1]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.stats.choose(input_ids[:, -1])
        self.stats.add(self.logits, scores)
        return scores


def steps_of(stats: dict[str, np.ndarray], row: int, n_steps: int, token_ids: Sequence[int], n_prompt: int,
             decode: Callable[[int], str], first: int = 0) -> list[Step]:
    """The Steps of batch row `row` from `StepStats.host()`: its first `n_steps` steps, kept from step `first` of
    the stats on, for the tokens after `n_prompt` of `token_ids`."""
    words: dict[int, str] = {}

    def word(i: int) -> str:
        if i not in words:
            words[i] = decode(i)
        return words[i]

    def candidates(p_row, i_row) -> list[Candidate]:
        return [Candidate(word(i), i, p) for p, i in zip(p_row.tolist(), i_row.tolist())]

    steps = []
    for s in range(n_steps):
        at = first + s
        token_id = int(token_ids[n_prompt + s])
        steps.append(
            Step(
                index=s,
                position=n_prompt + s,
                token=word(token_id),
                token_id=token_id,
                prob=float(stats["prob"][at, row]),
                rank=int(stats["rank"][at, row]),
                entropy=float(stats["entropy"][at, row]),
                top_k=candidates(stats["top_p"][at, row], stats["top_i"][at, row]),
                sampling_prob=float(stats["sampling_prob"][at, row]),
                sampling_entropy=float(stats["sampling_entropy"][at, row]),
                sampling_top_k=candidates(stats["sampling_top_p"][at, row], stats["sampling_top_i"][at, row]),
            )
        )
    return steps


def build_steps(
    token_ids: Sequence[int],
    n_prompt: int,
    raw_logits: Sequence[torch.Tensor],
    sampling_scores: Sequence[torch.Tensor],
    decode: Callable[[int], str],
    k: int = 10,
) -> list[Step]:
    """One Step per generated token from generate's `logits` (raw) and `scores` (after the processors)."""
    if not raw_logits:
        return []
    stats = StepStats(k)
    logits = torch.cat(list(raw_logits)).float()
    scores = torch.cat(list(sampling_scores)).float()
    stats.add(logits, scores)
    stats.choose(torch.tensor(token_ids[n_prompt : n_prompt + len(logits)], device=logits.device))
    # all steps as the rows of one "step": [1, S, ...] read back as S steps of one row
    host = {name: value[0][:, None] for name, value in stats.host().items()}
    return steps_of(host, 0, len(logits), token_ids, n_prompt, decode)
