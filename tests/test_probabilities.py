"""Per-step probabilities against softmax(logits) of an independent forward pass over the whole sequence."""

import math

import pytest
import torch

from conftest import make_tiny_lm


def independent_logits(lm, trace):
    """Logits predicting each generated token, from one plain forward pass over the final sequence."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([trace.token_ids])).logits[0].float()
    return logits[trace.n_prompt - 1 : trace.n_tokens - 1]


def test_probabilities_equal_softmax_of_independent_logits():
    lm = make_tiny_lm("gpt2")
    trace = lm.generate("probabilities", max_new_tokens=10, progress=False)
    logits = independent_logits(lm, trace)
    for step, row in zip(trace.steps, logits):
        probs = torch.softmax(row, -1)
        assert step.prob == pytest.approx(float(probs[step.token_id]), abs=1e-5)
        assert step.entropy == pytest.approx(float(-(probs * probs.log()).sum()), abs=1e-4)
        assert step.rank == int((row > row[step.token_id]).sum()) + 1
        expected = torch.topk(probs, 10)
        assert [c.token_id for c in step.top_k] == expected.indices.tolist()
        assert [c.prob for c in step.top_k] == pytest.approx(expected.values.tolist(), abs=1e-5)
        # greedy: the chosen token is the model's most likely one, and no processor changed the distribution
        assert step.rank == 1 and step.top_k[0].token_id == step.token_id
        assert step.sampling_prob == pytest.approx(step.prob, abs=1e-6)


def test_top_k_is_sorted_and_consistent_with_rank():
    lm = make_tiny_lm("llama")
    trace = lm.generate("rank", max_new_tokens=15, temperature=2.0, seed=1, candidates=5, progress=False)
    assert any(s.rank > 1 for s in trace.steps)  # high temperature picks unlikely tokens
    for step in trace.steps:
        probs = [c.prob for c in step.top_k]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        if step.rank <= 5:
            assert step.top_k[step.rank - 1].token_id == step.token_id
        else:
            assert step.prob <= probs[-1]


def test_sampling_distribution_is_the_one_after_temperature_top_k_and_top_p():
    lm = make_tiny_lm("qwen2")
    temperature, top_k, top_p = 0.7, 12, 0.8
    trace = lm.generate("warp", max_new_tokens=8, temperature=temperature, top_k=top_k, top_p=top_p, seed=3,
                        progress=False)
    logits = independent_logits(lm, trace)
    for step, row in zip(trace.steps, logits):
        scaled = row / temperature
        kth = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, -math.inf)
        probs = torch.softmax(scaled, -1)
        ordered, index = torch.sort(probs, descending=True)
        drop = ordered.cumsum(-1) - ordered > top_p  # keep the smallest set reaching top_p
        probs = probs.clone()
        probs[index[drop]] = 0
        probs /= probs.sum()
        assert step.sampling_prob == pytest.approx(float(probs[step.token_id]), abs=1e-5)
        assert step.sampling_prob > 0
        assert step.sampling_top_k[0].prob == pytest.approx(float(probs.max()), abs=1e-5)
        assert step.prob == pytest.approx(float(torch.softmax(row, -1)[step.token_id]), abs=1e-5)
