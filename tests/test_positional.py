"""Positional encodings read from the model against their definitions."""

import numpy as np
import pytest

from conftest import make_tiny_lm


def test_learned_positions_are_the_rows_of_the_position_embedding():
    lm = make_tiny_lm("gpt2")
    trace = lm.trace("learned positions")
    assert trace.positional.kind == "learned"
    expected = lm.model.transformer.wpe.weight[: trace.n_tokens].detach().numpy()
    np.testing.assert_array_equal(trace.positional.embeddings, expected)


@pytest.mark.parametrize("arch,fraction", [("llama", 1.0), ("gpt_neox", 0.25)])
def test_rotary_tables_follow_the_formula(arch, fraction):
    lm = make_tiny_lm(arch)
    trace = lm.trace("rotary positions")
    pos = trace.positional
    assert pos.kind == "rotary"
    head_dim = lm.model.config.hidden_size // lm.model.config.num_attention_heads
    assert pos.params["rotary_fraction"] == fraction
    rotary_dim = int(head_dim * fraction)
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, rotary_dim, 2) / rotary_dim))
    np.testing.assert_allclose(pos.inv_freq, inv_freq, rtol=1e-6)
    angles = np.arange(trace.n_tokens)[:, None] * inv_freq[None, :]
    np.testing.assert_allclose(pos.cos, np.cos(np.concatenate([angles, angles], -1)), atol=1e-5)
    np.testing.assert_allclose(pos.sin, np.sin(np.concatenate([angles, angles], -1)), atol=1e-5)


def test_gpt_neo_learned_and_description_present():
    trace = make_tiny_lm("gpt_neo").trace("neo")
    assert trace.positional.kind == "learned" and "position" in trace.positional.description


@pytest.mark.slow
def test_default_model_is_rotary_with_theta_100000(default_trace):
    pos = default_trace.positional
    assert pos.kind == "rotary" and pos.params["theta"] == 100000.0 and pos.params["rotary_dim"] == 64
    assert pos.cos.shape == (default_trace.n_tokens, 64)
