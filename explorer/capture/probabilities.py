"""Per-step probabilities: the model's own distribution (softmax of the raw logits) and the one sampled from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..trace import Candidate, Step


def _distributions(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities [S, V] and entropies [S] (nats) of softmax over each row; -inf logits get probability 0."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs, torch.special.entr(probs).sum(dim=-1)


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
    logits = torch.cat(list(raw_logits)).float()  # [S, V], all steps at once
    scores = torch.cat(list(sampling_scores)).float()
    chosen = torch.tensor(token_ids[n_prompt : n_prompt + len(logits)], device=logits.device)
    probs, entropy = _distributions(logits)
    sampling_probs, sampling_entropy = _distributions(scores)
    rows = torch.arange(len(logits), device=logits.device)
    ranks = (logits > logits[rows, chosen][:, None]).sum(dim=-1) + 1
    k = min(k, logits.shape[-1])
    top_p, top_i = torch.topk(probs, k)
    stop_p, stop_i = torch.topk(sampling_probs, k)
    words: dict[int, str] = {}

    def word(i: int) -> str:
        if i not in words:
            words[i] = decode(i)
        return words[i]

    def candidates(p_row, i_row) -> list[Candidate]:
        return [Candidate(word(i), i, p) for p, i in zip(p_row, i_row)]

    steps = []
    for s, token_id in enumerate(chosen.tolist()):
        steps.append(
            Step(
                index=s,
                position=n_prompt + s,
                token=word(token_id),
                token_id=token_id,
                prob=float(probs[s, token_id]),
                rank=int(ranks[s]),
                entropy=float(entropy[s]),
                top_k=candidates(top_p[s].tolist(), top_i[s].tolist()),
                sampling_prob=float(sampling_probs[s, token_id]),
                sampling_entropy=float(sampling_entropy[s]),
                sampling_top_k=candidates(stop_p[s].tolist(), stop_i[s].tolist()),
            )
        )
    return steps
