"""Direct logit attribution against an independent reference: hooks that catch each head's input to the output
projection in a plain eager forward pass, that head's slice of the weight, the final norm's formula written out
with its scale frozen, and the unembedding row of the token that came."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm, named_blocks, named_final_norm

import explorer

FAMILIES = ["llama", "qwen2", "mistral", "gpt2", "gpt_neox", "gpt_neo", "gemma2"]
LAYER_NORM = {"gpt2", "gpt_neox", "gpt_neo"}  # the others end in an RMS norm (Gemma's gain is 1 + weight)


def _output_projection(block, family: str):
    """Each family's attention output projection, by its own name."""
    if family == "gpt2":
        return block.attn.c_proj
    if family == "gpt_neox":
        return block.attention.dense
    if family == "gpt_neo":
        return block.attn.attention.out_proj
    return block.self_attn.o_proj


def reference(lm, family: str, token_ids: list[int], position: int) -> tuple[np.ndarray, float]:
    """Each head's share [layers, heads] of the logit of token_ids[position + 1], and the model's own logit there,
    from one eager forward pass over the tokens."""
    model = lm.model
    config = model.config
    n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or config.num_heads
    blocks, norm = named_blocks(model), named_final_norm(model)
    merged, final_input = {}, []
    handles = [_output_projection(block, family).register_forward_pre_hook(
        lambda _m, args, layer=layer: merged.__setitem__(layer, args[0][0, position].double()))
        for layer, block in enumerate(blocks)]
    handles.append(norm.register_forward_pre_hook(lambda _m, args: final_input.append(args[0][0, position].double())))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([token_ids]), use_cache=False).logits[0, position].double()
    finally:
        for handle in handles:
            handle.remove()
    target = token_ids[position + 1]
    h = final_input[0]
    row = model.get_output_embeddings().weight[target].double()
    weight = norm.weight.double()
    if family in LAYER_NORM:  # g ⊙ (x − mean x) / σ(h) + b: the scale frozen at h
        sigma = torch.sqrt(h.var(unbiased=False) + norm.eps)

        def through(x):
            return ((x - x.mean()) / sigma * weight) @ row
    else:
        gain = (1 + weight) if family == "gemma2" else weight
        eps = getattr(norm, "variance_epsilon", None) or norm.eps
        rms = torch.sqrt(h.pow(2).mean() + eps)

        def through(x):
            return (x / rms * gain) @ row
    shares = np.zeros((len(blocks), n_heads))
    for layer, block in enumerate(blocks):
        projection = _output_projection(block, family)
        z = merged[layer].reshape(n_heads, -1)
        width = z.shape[-1]
        for head in range(n_heads):
            rows = slice(head * width, (head + 1) * width)
            if type(projection).__name__ == "Conv1D":  # x @ weight
                written = z[head] @ projection.weight[rows].double()
            else:  # x @ weightᵀ
                written = z[head] @ projection.weight[:, rows].double().T
            shares[layer, head] = float(through(written).detach())  # the weights are parameters
    return shares, float(logits[target])


@pytest.mark.parametrize("family", FAMILIES)
def test_each_heads_share_equals_the_hooks_reference_and_the_parts_add_up_to_the_logit(family):
    lm = make_tiny_lm(family)
    trace = lm.generate("Hello, world", max_new_tokens=6, progress=False)
    assert trace.attribution is not None, trace.notes
    for step in range(trace.n_generated):
        got = trace.logit_attribution(step)
        want, logit = reference(lm, family, trace.token_ids, trace.steps[step].position - 1)
        np.testing.assert_allclose(got.heads, want, atol=1e-4)
        assert got.logit == pytest.approx(logit, abs=1e-3)  # the model's own logit, from the plain pass
        assert got.total == pytest.approx(logit, abs=1e-3)  # and the parts add up to it
        assert np.abs(got.mlp).max() > 0 and got.embedding != 0  # the other writers have their shares too


def test_a_text_read_with_the_lens_everywhere_has_every_positions_attribution():
    lm = make_tiny_lm("llama")
    text = lm.trace("The cat sat on the mat", lens="all")
    assert text.attribution.positions.tolist() == list(range(text.n_tokens - 1))  # the last has no next token
    for position in (0, 7, text.n_tokens - 2):
        got = text.logit_attribution(position=position)
        want, logit = reference(lm, "llama", text.token_ids, position)
        np.testing.assert_allclose(got.heads, want, atol=1e-4)
        assert got.total == pytest.approx(logit, abs=1e-3)
    with pytest.raises(IndexError, match="does not cover position"):
        text.logit_attribution(position=text.n_tokens - 1)


def test_a_batch_gives_each_prompt_the_attribution_it_gets_alone_and_heads_off_have_none():
    lm = make_tiny_lm("llama")
    prompts = ["Hi", "A longer prompt than that", "Mid one"]
    together = lm.generate(prompts, max_new_tokens=4, progress=False)
    for prompt, got in zip(prompts, together):
        alone = lm.generate(prompt, max_new_tokens=4, progress=False)
        for name, array in alone.attribution.tensors().items():
            np.testing.assert_allclose(getattr(got.attribution, name), array, atol=1e-5, err_msg=name)
    off = lm.generate(prompts[0], max_new_tokens=4, ablate=[(1, 2)], progress=False)
    assert np.all(off.attribution.heads[:, 1, 2] == 0)  # a head switched off wrote nothing
    assert off.logit_attribution(0).total == pytest.approx(off.attribution.logit[0], abs=1e-4)


def test_no_lens_means_no_attribution_and_the_error_says_why(tmp_path):
    lm = make_tiny_lm("llama")
    bare = lm.generate("Hello", max_new_tokens=3, lens=None, progress=False)
    assert bare.attribution is None
    with pytest.raises(ValueError, match="no logit attribution"):
        bare.logit_attribution(0)
    trace = lm.generate("Hello", max_new_tokens=3, progress=False)
    with pytest.raises(IndexError, match="out of range"):
        trace.logit_attribution(5)
    with pytest.raises(ValueError, match="a step or a position"):
        trace.logit_attribution()
    trace.save(tmp_path / "a.trace")  # and it is kept in the file, read back without a model
    again = explorer.load_trace(tmp_path / "a.trace")
    for name, array in trace.attribution.tensors().items():
        np.testing.assert_array_equal(getattr(again.attribution, name), array)


def test_a_branch_keeps_its_parents_attribution_before_the_branch_and_its_own_after():
    lm = make_tiny_lm("llama")
    parent = lm.generate("Hello, world", max_new_tokens=6, progress=False)
    token = parent.steps[2].top_k[1].token_id  # the runner-up at step 2
    branch = lm.branch(parent, 2, token)
    for step in range(branch.n_generated):
        got = branch.logit_attribution(step)
        want, logit = reference(lm, "llama", branch.token_ids, branch.steps[step].position - 1)
        np.testing.assert_allclose(got.heads, want, atol=1e-4)
        assert got.total == pytest.approx(logit, abs=1e-3)
    np.testing.assert_array_equal(branch.logit_attribution(1).heads, parent.logit_attribution(1).heads)
    at = branch.steps[2].position - 1  # the forced token's own step: its lens and attribution are of that token
    assert branch.lens.next_token_prob(-1, at) == pytest.approx(branch.steps[2].prob, abs=1e-5)
    assert parent.lens.next_token_prob(-1, at) == pytest.approx(parent.steps[2].prob, abs=1e-5)


@pytest.mark.slow
def test_on_smollm2_the_heads_that_write_the_repeated_token_are_what_switching_off_lowers_it_most(default_lm):
    """Random tokens read twice (the atlas's built-in set): on the second copy each next token is the one that
    followed it in the first. The heads with the largest direct share of its logit include the atlas's induction
    heads of layer 23; the strongest induction heads (17–18) write against the token directly and act through
    later layers. Switching the top heads off lowers the logit far more than switching off as many heads whose
    share is nearest zero: the number means what it says."""
    sequences = explorer.repeated_random_tokens(default_lm)[:4]
    traces = default_lm.trace_ids(sequences, lens="all", progress=False)
    second = [t.attribution.positions >= t.n_tokens // 2 for t in traces]
    shares = np.mean([t.attribution.heads[s].mean(0) for t, s in zip(traces, second)], axis=0)  # [L, H]
    induction = np.mean([t.head_scores()["induction"] for t in traces], axis=0)
    order = [tuple(int(i) for i in np.unravel_index(k, shares.shape)) for k in np.argsort(-shares.ravel())]
    top, quiet = order[:5], sorted(order, key=lambda lh: abs(shares[lh]))[:5]
    assert max(induction[lh] for lh in top) > 0.4  # induction heads among those that write the token most
    assert shares[top[0]] > 1.0  # nats of logit from one head

    def drop(heads) -> float:
        """How much switching `heads` off lowers the logit of the repeated tokens, on average."""
        off = default_lm.trace_ids(sequences, lens="all", ablate=heads, progress=False)
        return float(np.mean([t.attribution.logit[s].mean() - o.attribution.logit[s].mean()
                              for t, o, s in zip(traces, off, second)]))

    wrote_most, wrote_least = drop(top), drop(quiet)
    assert wrote_most > 1.0 and wrote_most > 5 * abs(wrote_least)


def test_the_contribution_graph_splits_each_heads_share_over_its_sources_and_the_residual_adds_up():
    lm = make_tiny_lm("llama")
    trace = lm.generate("Hello, world", max_new_tokens=5, progress=False, keep_values=True)
    for step in (0, 4):
        graph = trace.contribution_graph(step)
        shares = trace.logit_attribution(step)
        p = trace.steps[step].position - 1
        assert graph.position == p and graph.edges.shape == (trace.n_layers, p + 1) and graph.weighted
        want = np.zeros((trace.n_layers, p + 1))
        for layer in range(trace.n_layers):  # a loop over heads and tokens, from the trace's own arrays
            for head in range(trace.n_heads):
                weights = [trace.attention(layer, head, kind="norm")[p, j] for j in range(p + 1)]
                for j in range(p + 1):
                    want[layer, j] += shares.heads[layer, head] * weights[j] / sum(weights)
        np.testing.assert_allclose(graph.edges, want, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(graph.edges.sum(1), shares.heads.sum(1), rtol=1e-4, atol=1e-6)
        assert graph.residual[0] == pytest.approx(shares.embedding)
        assert graph.residual[-1] + shares.constant == pytest.approx(shares.logit, abs=1e-3)
        strong = graph.strongest(0.5)
        top = np.abs(graph.edges).max()
        assert strong and all(abs(share) >= 0.5 * top for _, _, share in strong)
        assert len(graph.strongest(0.0)) == graph.edges.size
