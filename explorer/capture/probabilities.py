"""Per-step probabilities: the model's own distribution (softmax of the raw logits) and the one sampled from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..trace import Candidate, Step


def _distribution(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and entropy (nats) of softmax(logits); -inf logits get probability 0."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    probs = log_probs.exp()
    entropy = torch.special.entr(probs).sum()
    return probs, entropy


def _top_k(probs: torch.Tensor, k: int, decode: Callable[[int], str]) -> list[Candidate]:
    values, ids = torch.topk(probs, min(k, probs.shape[-1]))
    return [Candidate(decode(int(i)), int(i), float(v)) for v, i in zip(values.tolist(), ids.tolist())]


def build_steps(
    token_ids: Sequence[int],
    n_prompt: int,
    raw_logits: Sequence[torch.Tensor],
    sampling_scores: Sequence[torch.Tensor],
    decode: Callable[[int], str],
    k: int = 10,
) -> list[Step]:
    """One Step per generated token from generate's `logits` (raw) and `scores` (after the processors)."""
    steps = []
    for index, (logits, scores) in enumerate(zip(raw_logits, sampling_scores)):
        position = n_prompt + index
        token_id = int(token_ids[position])
        logits, scores = logits[0], scores[0]
        probs, entropy = _distribution(logits)
        sampling_probs, sampling_entropy = _distribution(scores)
        rank = int((logits > logits[token_id]).sum()) + 1
        steps.append(
            Step(
                index=index,
                position=position,
                token=decode(token_id),
                token_id=token_id,
                prob=float(probs[token_id]),
                rank=rank,
                entropy=float(entropy),
                top_k=_top_k(probs, k, decode),
                sampling_prob=float(sampling_probs[token_id]),
                sampling_entropy=float(sampling_entropy),
                sampling_top_k=_top_k(sampling_probs, k, decode),
            )
        )
    return steps
