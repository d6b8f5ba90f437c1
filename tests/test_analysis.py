"""Head scores and attention rollout against their definitions, computed by plain loops from transformers' own
eager attention (not from the trace), on tiny models of several architectures and on SmolLM2."""

import numpy as np
import pytest

from conftest import make_tiny_lm
from test_capture import eager_attentions


def scores_by_definition(attentions: list[np.ndarray], ids: list[int]) -> dict[str, np.ndarray]:
    """The seven scores, one row at a time, straight from their definitions."""
    n_layers, n_heads, n = len(attentions), attentions[0].shape[0], len(ids)
    out = {name: np.zeros((n_layers, n_heads)) for name in
           ("previous_token", "first_token", "self", "duplicate_token", "induction", "entropy", "distance")}
    for layer, a in enumerate(attentions):
        for h in range(n_heads):
            prev, first, self_, dup, ind, ent, far = [], [], [], [], [], [], []
            for i in range(1, n):
                row = a[h, i]
                prev.append(row[i - 1])
                first.append(row[0])
                self_.append(row[i])
                ent.append(-sum(p * np.log(p) for p in row[: i + 1] if p > 0))
                weight = sum(row[j] for j in range(1, i + 1))
                far.append(sum(row[j] * (i - j) for j in range(1, i + 1)) / weight if weight > 0 else 0.0)
                earlier = [j for j in range(i) if ids[j] == ids[i]]
                if earlier:
                    dup.append(sum(row[j] for j in earlier))
                inducing = [j for j in range(i - 1) if ids[j] == ids[i]]
                if inducing:
                    ind.append(sum(row[j + 1] for j in inducing))
            for name, values in [("previous_token", prev), ("first_token", first), ("self", self_),
                                 ("duplicate_token", dup), ("induction", ind), ("entropy", ent),
                                 ("distance", far)]:
                out[name][layer, h] = np.mean(values)
    return out


def rollout_by_definition(attentions: list[np.ndarray]) -> np.ndarray:
    n = attentions[0].shape[-1]
    flow = np.eye(n)
    for a in attentions:
        flow = (0.5 * a.mean(0) + 0.5 * np.eye(n)) @ flow
    return flow


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neo", "mistral", "gemma2"])
def test_head_scores_and_rollout_follow_their_definitions(arch):
    lm = make_tiny_lm(arch)
    text = "abcdabcdxyzabcd"  # repeats, so duplicate-token and induction rows exist
    trace = lm.trace(text, precision="float32")
    reference = eager_attentions(lm, trace.token_ids)
    expected = scores_by_definition(reference, trace.token_ids)
    got = trace.head_scores()
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == (trace.n_layers, trace.n_heads)
        np.testing.assert_allclose(got[name], expected[name], atol=2e-5, err_msg=name)
    np.testing.assert_allclose(trace.attention_flow("rollout"), rollout_by_definition(reference), atol=2e-5)
    np.testing.assert_allclose(trace.attention_flow().sum(1), 1, atol=1e-5)  # rows of a product of stochastic rows


def test_a_score_with_no_rows_is_nan_and_an_unknown_flow_is_refused():
    trace = make_tiny_lm("llama").trace("abcdefg")  # no token repeats
    scores = trace.head_scores()
    assert np.isnan(scores["duplicate_token"]).all() and np.isnan(scores["induction"]).all()
    assert not np.isnan(scores["previous_token"]).any()
    with pytest.raises(ValueError, match="rollout"):
        trace.attention_flow("gradient")


@pytest.mark.slow
def test_smollm2_has_induction_and_previous_token_heads(default_lm):
    """A random token sequence repeated twice: the second copy can only be predicted by induction."""
    rng = np.random.default_rng(0)
    words = rng.choice(["apple", "river", "stone", "cloud", "music", "green", "table", "night", "paper", "horse",
                        "light", "dream", "ocean", "tiger", "candle", "forest"], size=40)
    text = " ".join(words)
    trace = default_lm.trace(text + " " + text)
    scores = trace.head_scores()
    assert np.nanmax(scores["induction"]) > 0.3
    assert np.nanmax(scores["previous_token"]) > 0.5


def test_distance_profile_follows_its_definition():
    """Attention by distance from eager weights by a loop: mean α[i, i-d] over rows with a key d back (not the first
    position), the first position apart; and with rotary undone the profile changes."""
    from explorer.analysis import distance_profile

    lm = make_tiny_lm("llama")
    trace = lm.trace("abcdabcdxyzabcd", precision="float32")
    reference = eager_attentions(lm, trace.token_ids)
    n = trace.n_tokens
    for layer, head in [(0, 0), (1, 3)]:
        a = reference[layer][head]
        got = distance_profile(trace, layer, head, max_distance=6)
        expected = [np.mean([a[i, i - d] for i in range(1, n) if i - d >= 1]) for d in range(7)]
        np.testing.assert_allclose(got["weight"], expected, atol=1e-6)
        np.testing.assert_allclose(got["first_token"], np.mean(a[1:, 0]), atol=1e-6)
    unrotated = distance_profile(trace, 0, 0, max_distance=6, kind="no_position")["weight"]
    assert not np.allclose(unrotated, distance_profile(trace, 0, 0, max_distance=6)["weight"])
