"""What-if: branches against plain generate on the branch's prefix and forced token, ablation against a forward
pass with a pre-hook that zeroes the head's slice of the output projection's input, and trees of branches saved
in one file."""

import numpy as np
import pytest
import torch
from transformers import set_seed

import explorer
from conftest import ARCHITECTURES, make_tiny_lm, named_blocks
from explorer.capture.attention import _output_projection_module, attention_modules
from explorer.errors import SettingsError
from test_capture import eager_attentions, max_attention_error


def plain_generate(lm, ids, n, **sampling):
    ids = torch.tensor([ids])
    settings = {"do_sample": False} if not sampling else {"do_sample": True, "top_k": 0, "top_p": 1.0} | sampling
    with torch.no_grad():
        return lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, pad_token_id=0,
                                 **settings)[0].tolist()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_greedy_branch_is_plain_generate_from_its_prefix_and_forced_token(arch):
    lm = make_tiny_lm(arch)
    trace = lm.generate("What if", max_new_tokens=10, progress=False)
    forced = next(c for c in trace.steps[4].top_k if c.token_id != trace.steps[4].token_id)  # a runner-up
    branch = lm.branch(trace, step=4, token=forced, progress=False)
    at = trace.steps[4].position
    assert branch.parent is trace and branch.branch_step == 4 and branch.parent_id == trace.id
    assert branch.token_ids[:at] == trace.token_ids[:at] and branch.token_ids[at] == forced.token_id
    assert branch.token_ids == plain_generate(lm, branch.token_ids[: at + 1], 10 - 5)
    assert branch.n_prompt == trace.n_prompt and branch.n_generated == 10
    assert branch.steps[:4] == trace.steps[:4]
    assert [s.index for s in branch.steps] == list(range(10))
    step = branch.steps[4]  # the forced step: the model's own distribution at the position before it
    with torch.no_grad():
        logits = lm.model(torch.tensor([branch.token_ids[:at]])).logits[0, -1].float()
    probs = torch.softmax(logits, -1)
    assert step.prob == pytest.approx(float(probs[forced.token_id]), rel=1e-4)
    assert step.rank == int((logits > logits[forced.token_id]).sum()) + 1 and step.sampling_prob == 1.0
    assert max_attention_error(branch, eager_attentions(lm, branch.token_ids)) < 1e-4
    assert branch.lens.positions.tolist() == [s.position - 1 for s in branch.steps]


def test_a_sampled_branch_follows_the_seed_rule():
    lm = make_tiny_lm("llama")
    trace = lm.generate("Seeded", max_new_tokens=8, temperature=0.9, seed=7, progress=False)
    branch = lm.branch(trace, 2, 40, progress=False)
    at = trace.steps[2].position
    set_seed(7)  # the documented rule: set_seed(seed), then generate on the prefix plus the forced token
    assert branch.token_ids == plain_generate(lm, branch.token_ids[: at + 1], 8 - 3, temperature=0.9)
    assert lm.branch(trace, 2, 40, progress=False).token_ids == branch.token_ids  # reproducible


def test_branches_of_branches_at_the_last_step_and_by_text():
    lm = make_tiny_lm("qwen2")
    trace = lm.generate("Tree", max_new_tokens=6, progress=False)
    last = lm.branch(trace, 5, "Z", progress=False)  # nothing follows: just the forced token
    assert last.token_ids == trace.token_ids[:-1] + [lm.tokenizer("Z", add_special_tokens=False)["input_ids"][0]]
    assert last.n_generated == 6 and last.steps[5].token == lm.decode_token(last.token_ids[-1])
    deeper = lm.branch(last, 2, 33, progress=False)
    assert deeper.parent is last and deeper.parent.parent is trace


@pytest.mark.parametrize("bad, message", [
    ({"step": 6, "token": 3}, "step must be"),
    ({"step": -1, "token": 3}, "step must be"),
    ({"step": 1, "token": "two tokens"}, "not one"),
    ({"step": 1, "token": 10_000}, "token must be"),
    ({"step": 1, "token": 2.5}, "token must be"),
])
def test_bad_branches_are_refused_clearly(bad, message):
    lm = make_tiny_lm("llama")
    trace = lm.generate("x", max_new_tokens=6, progress=False)
    with pytest.raises(SettingsError, match=message):
        lm.branch(trace, **bad, progress=False)
    with pytest.raises(SettingsError, match="no generated steps"):
        lm.branch(lm.trace("read"), 0, 3)


def ablated_reference(lm, ablate):
    """Pre-hooks on each layer's output projection zeroing the ablated heads' slices of its input."""
    config = lm.model.config
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    handles = []
    for layer, block in enumerate(named_blocks(lm.model)):
        heads = [h for l, h in ablate if l == layer]
        if not heads:
            continue
        projection = _output_projection_module(attention_modules(block)[0])

        def zero(module, args, heads=heads):
            x = args[0].clone()
            for h in heads:
                x[..., h * dim : (h + 1) * dim] = 0
            return (x, *args[1:])

        handles.append(projection.register_forward_pre_hook(zero))
    return handles


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_ablation_equals_zeroing_the_heads_input_to_the_output_projection(arch):
    lm = make_tiny_lm(arch)
    ablate = [(0, 1), (1, 0), (1, 3)]
    trace = lm.generate("Knock out", max_new_tokens=8, ablate=ablate, progress=False)
    assert trace.settings["ablate"] == [[0, 1], [1, 0], [1, 3]]
    handles = ablated_reference(lm, ablate)
    try:
        assert trace.token_ids == plain_generate(lm, trace.token_ids[: trace.n_prompt], 8)
        with torch.no_grad():
            logits = lm.model(torch.tensor([trace.token_ids])).logits[0].float()
        reference = eager_attentions(lm, trace.token_ids)
    finally:
        for handle in handles:
            handle.remove()
    probs = torch.softmax(logits, -1)
    for step in trace.steps:
        assert step.prob == pytest.approx(float(probs[step.position - 1, step.token_id]), rel=1e-4, abs=1e-6)
    assert max_attention_error(trace, reference) < 1e-4  # the same capture shows the changed attention
    plain = lm.generate("Knock out", max_new_tokens=8, progress=False)
    assert plain.settings["ablate"] == [] and not np.allclose(
        [s.prob for s in plain.steps], [s.prob for s in trace.steps])


@pytest.mark.parametrize("ablate", [[(2, 0)], [(0, 4)], [(0,)], [("0", 1)], [(True, 1)], "heads"])
def test_bad_ablations_are_refused(ablate):
    with pytest.raises(SettingsError, match="ablate"):
        make_tiny_lm("llama").generate("x", max_new_tokens=2, ablate=ablate, progress=False)


def test_a_branch_keeps_the_parents_ablation_and_a_tree_saves_in_one_file(tmp_path):
    lm = make_tiny_lm("gpt_neo")
    trace = lm.generate("Saved tree", max_new_tokens=6, ablate=[(1, 2)], progress=False)
    branch = lm.branch(trace, 1, 50, progress=False)
    assert branch.settings["ablate"] == [[1, 2]]
    handles = ablated_reference(lm, [(1, 2)])
    try:
        assert branch.token_ids == plain_generate(lm, branch.token_ids[: branch.steps[1].position + 1], 4)
    finally:
        for handle in handles:
            handle.remove()
    twig = lm.branch(branch, 3, 60, progress=False)
    explorer.save_traces([trace, branch, twig], tmp_path / "tree.trace")
    loaded = explorer.load_traces(tmp_path / "tree.trace")
    assert [t.id for t in loaded] == [trace.id, branch.id, twig.id]
    assert loaded[1].parent is loaded[0] and loaded[2].parent is loaded[1] and loaded[2].branch_step == 3
    assert loaded[2].token_ids == twig.token_ids and loaded[2].steps == twig.steps
    np.testing.assert_array_equal(loaded[2].attention(1, 2), twig.attention(1, 2))
    with pytest.raises(explorer.TraceFileError, match="load_traces"):
        explorer.load_trace(tmp_path / "tree.trace")
    branch.save(tmp_path / "branch.trace")  # alone: it names its parent but cannot hold it
    alone = explorer.load_trace(tmp_path / "branch.trace")
    assert alone.parent is None and alone.parent_id == trace.id and alone.branch_step == 1


@pytest.mark.parametrize("arch", ["llama", "gpt_neo"])
def test_rescore_gives_a_steps_probabilities_with_heads_switched_off(arch):
    from explorer.whatif import rescore

    lm = make_tiny_lm(arch)
    trace = lm.generate("Heads off", max_new_tokens=5, progress=False)
    same = rescore(lm, trace, 3, [])
    assert same.token_id == trace.steps[3].token_id and same.prob == pytest.approx(trace.steps[3].prob, rel=1e-4)
    assert [c.token_id for c in same.top_k] == [c.token_id for c in trace.steps[3].top_k]
    off = rescore(lm, trace, 3, [(1, 0), (1, 1)])
    handles = ablated_reference(lm, [(1, 0), (1, 1)])
    try:
        with torch.no_grad():
            logits = lm.model(torch.tensor([trace.token_ids[: trace.steps[3].position]])).logits[0, -1].float()
    finally:
        for handle in handles:
            handle.remove()
    probs = torch.softmax(logits, -1)
    assert off.index == 3 and off.prob == pytest.approx(float(probs[off.token_id]), rel=1e-4)
    assert [c.token_id for c in off.top_k] == torch.topk(probs, len(off.top_k)).indices.tolist()


def test_a_tree_travels_as_bytes_and_a_broken_one_is_refused():
    from explorer.trace import traces_to_bytes
    from explorer.trace_file import trace_from_bytes, traces_from_bytes

    lm = make_tiny_lm("llama")
    trace = lm.generate("Bytes", max_new_tokens=4, progress=False)
    branch = lm.branch(trace, 1, 30, progress=False)
    data = traces_to_bytes([trace, branch])
    back = traces_from_bytes(data, "an upload")
    assert back[1].parent is back[0] and back[1].token_ids == branch.token_ids
    with pytest.raises(explorer.TraceFileError, match="holds 2 traces"):
        trace_from_bytes(data, "an upload")
    assert trace_from_bytes(trace.to_bytes()).token_ids == trace.token_ids
    with pytest.raises(explorer.TraceFileError, match="an upload"):
        traces_from_bytes(data[: len(data) // 2], "an upload")
