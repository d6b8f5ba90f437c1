"""Logit lens, surprisal and value norms captured during generation, against independent computations from the
model itself: its own hidden states (output_hidden_states), a separate forward pass, and its v and W_O."""

import numpy as np
import pytest
import torch

from conftest import ARCHITECTURES, make_tiny_lm, named_blocks, named_final_norm
from explorer.errors import SettingsError
from explorer.trace_file import load_trace


def hidden_states(lm, token_ids):
    """transformers' own hidden states of one forward pass: embeddings, then one per block (the last normed)."""
    with torch.no_grad():
        return lm.model(torch.tensor([token_ids]), output_hidden_states=True).hidden_states


def lens_probs(lm, state: torch.Tensor, normed: bool) -> torch.Tensor:
    """softmax(lm_head(final_norm(h))) of one hidden state [d], written out from the model's modules."""
    with torch.no_grad():
        h = state if normed else named_final_norm(lm.model)(state)
        logits = lm.model.get_output_embeddings()(h).float()
        cap = getattr(lm.model.config, "final_logit_softcapping", None)
        return torch.softmax(cap * torch.tanh(logits / cap) if cap else logits, -1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lens_matches_the_models_own_output_and_its_hidden_states(arch):
    lm = make_tiny_lm(arch)
    trace = lm.generate("Lens, please", max_new_tokens=6, candidates=5, progress=False)
    lens, last = trace.lens, trace.n_layers - 1
    assert lens.positions.tolist() == [s.position - 1 for s in trace.steps]
    for step in trace.steps:  # the last layer is the model's own distribution
        assert lens.next_token_prob(last, step.position - 1) == pytest.approx(step.prob, rel=1e-4, abs=1e-6)
        assert lens.next_token_rank(last, step.position - 1) == step.rank
        assert [c.token_id for c in lens.top_k(last, step.position - 1)] == [c.token_id for c in step.top_k[:5]]
    assert_lens_matches_hidden_states(lm, trace, 5)


def assert_lens_matches_hidden_states(lm, trace, k: int):
    """Every covered cell of the lens against a plain float32 softmax of transformers' own hidden states."""
    lens, last = trace.lens, trace.n_layers - 1
    states = hidden_states(lm, trace.token_ids)
    for layer in range(trace.n_layers):
        for position in lens.positions.tolist():
            probs = lens_probs(lm, states[layer + 1][0, position], normed=layer == last)
            top_p, top_i = torch.topk(probs, k)
            got = lens.top_k(layer, position)
            assert [c.token_id for c in got] == top_i.tolist()
            np.testing.assert_allclose([c.prob for c in got], top_p.numpy(), rtol=1e-4, atol=1e-6)
            if position + 1 == trace.n_tokens:
                continue
            nxt = trace.token_ids[position + 1]
            assert lens.next_token_prob(layer, position) == pytest.approx(float(probs[nxt]), rel=1e-4, abs=1e-6)
            assert lens.next_token_rank(layer, position) == int((probs > probs[nxt]).sum()) + 1
            assert got[0].token == lm.decode_token(got[0].token_id)


def expected_surprisal(lm, trace) -> np.ndarray:
    """-ln p(token i | before it), i >= 1, from the log-softmax of a separate forward pass."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([trace.token_ids])).logits[0].float()
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    logits = cap * torch.tanh(logits / cap) if cap else logits
    return -torch.log_softmax(logits, -1)[torch.arange(trace.n_tokens - 1), trace.token_ids[1:]].numpy()


class SubclassedHead(torch.nn.Linear):
    """An lm_head that is not a plain nn.Linear (as quantised layers are): read whole rows, in chunks."""


@pytest.mark.parametrize("arch", ["llama", "llama with a biased lm_head", "gpt2", "gemma2",
                                  "llama with a subclassed lm_head"])
def test_lens_and_surprisal_read_in_tiles_match_whole_rows(arch, monkeypatch):
    """The unembedding read a few rows against a few vocabulary ids at a time, as SmolLM2's 49,152 ids are (blocks
    narrower than k, a last block shorter than the others, several row groups), or, for a head that is not a
    plain nn.Linear, a few whole rows at a time: the same top-k, probabilities, ranks and surprisal as a plain
    float32 softmax of whole rows."""
    from explorer.capture import lens as lens_module

    monkeypatch.setattr(lens_module, "GROUP_ROWS", 4)
    monkeypatch.setattr(lens_module, "TILE_FLOATS", 1)
    monkeypatch.setattr(lens_module, "BLOCK_MIN", 7)  # 96 ids: 13 blocks of 7 and one of 5
    monkeypatch.setattr(lens_module, "CHUNK_ROWS", 5)
    monkeypatch.setattr(lens_module, "TOPK_ROWS", 2)
    lm = make_tiny_lm(arch.split()[0])
    if "bias" in arch:
        lm.model.lm_head.bias = torch.nn.Parameter(torch.randn(lm.model.config.vocab_size))
    if "subclassed" in arch:
        plain = lm.model.lm_head
        lm.model.lm_head = SubclassedHead(plain.in_features, plain.out_features, bias=False)
        lm.model.lm_head.weight = plain.weight
        assert lens_module._plain_head(lm.model, torch.zeros(1, plain.in_features)) is None
    trace = lm.generate("Lens in tiles", max_new_tokens=6, candidates=8, progress=False)
    assert_lens_matches_hidden_states(lm, trace, 8)
    np.testing.assert_allclose(trace.surprisal[1:], expected_surprisal(lm, trace), rtol=1e-4, atol=1e-4)
    read = lm.trace("Every position, in tiles", lens="all", candidates=3, progress=False)
    assert_lens_matches_hidden_states(lm, read, 3)
    np.testing.assert_allclose(read.surprisal[1:], expected_surprisal(lm, read), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt_neo"])
def test_lens_all_covers_every_position_of_a_read_text(arch):
    lm = make_tiny_lm(arch)
    trace = lm.trace("every position", lens="all", candidates=3, progress=False)
    assert trace.lens.positions.tolist() == list(range(trace.n_tokens))
    states = hidden_states(lm, trace.token_ids)
    for position in (0, 5, trace.n_tokens - 2):
        probs = lens_probs(lm, states[1][0, position], normed=trace.n_layers == 1)
        assert trace.lens.next_token_prob(0, position) == pytest.approx(
            float(probs[trace.token_ids[position + 1]]), rel=1e-4, abs=1e-6)
    end = trace.n_tokens - 1  # nothing follows the last token
    assert np.isnan(trace.lens.next_token_prob(0, end)) and trace.lens.next_token_rank(0, end) == 0
    assert len(trace.lens.top_k(0, end)) == 3
    with pytest.raises(IndexError, match="does not cover"):
        make_tiny_lm(arch).generate("x", max_new_tokens=2, progress=False).lens.top_k(0, 0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_surprisal_equals_log_softmax_of_a_separate_forward_pass(arch):
    lm = make_tiny_lm(arch)
    for trace in (lm.generate("How surprising", max_new_tokens=5, progress=False), lm.trace("How surprising")):
        with torch.no_grad():
            logits = lm.model(torch.tensor([trace.token_ids])).logits[0].float()
        cap = getattr(lm.model.config, "final_logit_softcapping", None)
        logits = cap * torch.tanh(logits / cap) if cap else logits
        expected = -torch.log_softmax(logits, -1)[torch.arange(trace.n_tokens - 1), trace.token_ids[1:]].numpy()
        assert trace.surprisal.dtype == np.float32 and trace.surprisal.shape == (trace.n_tokens,)
        assert np.isnan(trace.surprisal[0])
        np.testing.assert_allclose(trace.surprisal[1:], expected, rtol=1e-4, atol=1e-4)


def reference_value_norms(lm, token_ids) -> np.ndarray:
    """‖v_j^h W_O^h‖ from the values each layer's v projection (or fused qkv) computes and its output projection,
    [layers, heads, T], read with forward hooks in a separate eager pass."""
    model, config = lm.model, lm.model.config
    n_heads = config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    seen: list[torch.Tensor] = []
    handles = []
    for block in named_blocks(model):
        modules = dict(block.named_modules())
        values = next((m for n, m in modules.items() if n.endswith("v_proj")), None)
        if values is not None:
            handles.append(values.register_forward_hook(lambda m, a, out: seen.append(out[0])))
        else:  # GPT-2's c_attn and GPT-NeoX's query_key_value give q, k, v together
            fused = next(m for n, m in modules.items() if n.endswith(("c_attn", "query_key_value")))
            handles.append(fused.register_forward_hook(lambda m, a, out, fused=fused: seen.append(out[0])))
    try:
        with torch.no_grad():
            model(torch.tensor([token_ids]))
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for block, v in zip(named_blocks(model), seen):
        modules = dict(block.named_modules())
        proj = next(m for n, m in modules.items() if n.endswith(("o_proj", "attn.c_proj", "dense", "out_proj")))
        w = proj.weight if type(proj).__name__ == "Conv1D" else proj.weight.T  # [H·d, hidden]
        if v.shape[-1] == 3 * n_heads * dim:
            if config.model_type == "gpt_neox":  # [q k v] interleaved per head
                v = v.reshape(-1, n_heads, 3 * dim)[..., 2 * dim :]
            else:  # GPT-2: q | k | v
                v = v[:, 2 * n_heads * dim :].reshape(-1, n_heads, dim)
        else:
            v = v.reshape(len(token_ids), -1, dim)
            v = v.repeat_interleave(n_heads // v.shape[1], dim=1)  # grouped-query: each head uses its group's v
        norms = [torch.linalg.norm(v[:, h] @ w[h * dim : (h + 1) * dim], dim=-1) for h in range(n_heads)]
        out.append(torch.stack(norms).detach().numpy())
    return np.stack(out)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_value_norms_against_v_and_the_output_projection(arch, tmp_path):
    lm = make_tiny_lm(arch)
    trace = lm.generate("Norms", max_new_tokens=4, progress=False)
    expected = reference_value_norms(lm, trace.token_ids)
    assert trace.value_norms.shape == (trace.n_layers, trace.n_heads, trace.n_tokens)
    np.testing.assert_allclose(trace.value_norms, expected, rtol=1e-4, atol=1e-5)
    weighted = trace.attention(1, 2, kind="norm")
    np.testing.assert_allclose(weighted, trace.attention(1, 2) * expected[1, 2][None, :], rtol=1e-4, atol=1e-6)
    mean = np.mean([trace.attention(1, h) * expected[1, h][None, :] for h in range(trace.n_heads)], axis=0)
    np.testing.assert_allclose(trace.attention(1, None, kind="norm"), mean, rtol=1e-4, atol=1e-6)
    trace.save(tmp_path / "t.trace")
    loaded = load_trace(tmp_path / "t.trace")
    np.testing.assert_array_equal(loaded.value_norms, trace.value_norms)
    np.testing.assert_array_equal(loaded.surprisal, trace.surprisal)
    np.testing.assert_array_equal(loaded.lens.top_ids, trace.lens.top_ids)
    assert loaded.lens.top_k(0, trace.steps[1].position - 1) == trace.lens.top_k(0, trace.steps[1].position - 1)


def test_lens_settings_are_checked():
    lm = make_tiny_lm("llama")
    with pytest.raises(SettingsError, match="lens must be"):
        lm.generate("x", max_new_tokens=2, lens="everything", progress=False)
    with pytest.raises(SettingsError, match="no generated steps"):
        lm.trace("x", lens="steps")
    trace = lm.generate("xyz", max_new_tokens=2, lens=None, progress=False)
    assert trace.lens is None and trace.settings["lens"] is None and not np.isnan(trace.surprisal[-1])
    # lens=None is the bare capture: the generated tokens' surprisal (from generate's own logits), not the prompt's
    assert np.isnan(trace.surprisal[: trace.n_prompt]).all()
    assert not np.isnan(lm.trace("xyz").surprisal[1:]).any()  # a read text always has its surprisal


def test_tokens_are_those_of_plain_generate_with_the_lens_on():
    lm = make_tiny_lm("qwen2")
    trace = lm.generate("Same tokens", max_new_tokens=8, lens="all", progress=False)
    ids = torch.tensor([trace.token_ids[: trace.n_prompt]])
    with torch.no_grad():
        plain = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                  pad_token_id=0)
    assert trace.token_ids == plain[0].tolist()
    assert trace.lens.positions.tolist() == list(range(trace.n_tokens))


def test_smollm2_lens_surprisal_and_norms(default_lm):
    lm = default_lm
    trace = lm.generate("The capital of France is", max_new_tokens=6, progress=False)
    last = trace.n_layers - 1
    for step in trace.steps:
        assert trace.lens.next_token_prob(last, step.position - 1) == pytest.approx(step.prob, rel=1e-3, abs=1e-6)
    states = hidden_states(lm, trace.token_ids)
    position = trace.steps[2].position - 1
    for layer in (0, 14, last - 1):
        probs = lens_probs(lm, states[layer + 1][0, position], normed=False)
        assert [c.token_id for c in trace.lens.top_k(layer, position)][:3] == torch.topk(probs, 3).indices.tolist()
    with torch.no_grad():
        logits = lm.model(torch.tensor([trace.token_ids])).logits[0].float()
    expected = -torch.log_softmax(logits, -1)[torch.arange(trace.n_tokens - 1), trace.token_ids[1:]].numpy()
    np.testing.assert_allclose(trace.surprisal[1:], expected, rtol=1e-3, atol=1e-3)
    assert trace.lens.top_k(last, trace.steps[0].position - 1)[0].token == trace.steps[0].top_k[0].token
    assert trace.value_norms.shape == (30, 9, trace.n_tokens) and np.all(trace.value_norms > 0)


def test_switching_smollm2s_induction_heads_off_breaks_copying(default_lm):
    """An independent check that the induction score finds heads that matter: a random word sequence read twice
    is predictable in its second copy, and stops being so when the top induction heads are zeroed, not when as
    many of the least inductive heads are."""
    rng = np.random.default_rng(0)
    words = ["apple", "river", "candle", "mountain", "violin", "garden", "pencil", "thunder", "mirror", "basket",
             "lantern", "ocean", "feather", "castle", "marble", "rocket", "saddle", "tulip", "window", "zebra"]
    sequence = " ".join(rng.choice(words, 12))
    text = sequence + ". " + sequence
    read = default_lm.trace(text, progress=False)
    induction = read.head_scores()["induction"]
    order = np.argsort(-induction, axis=None)
    top = [tuple(int(x) for x in np.unravel_index(i, induction.shape)) for i in order[:4]]
    bottom = [tuple(int(x) for x in np.unravel_index(i, induction.shape)) for i in order[-4:]]
    second = slice(read.n_tokens // 2 + 2, read.n_tokens)
    intact = np.nanmean(read.surprisal[second])
    off = np.nanmean(default_lm.trace(text, ablate=top, progress=False).surprisal[second])
    control = np.nanmean(default_lm.trace(text, ablate=bottom, progress=False).surprisal[second])
    assert off > 2 * intact and off > 2 * control, (intact, off, control)
