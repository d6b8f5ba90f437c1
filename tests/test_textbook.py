"""The textbook GPT: its attention is the textbook formula, its trace is a trace like the wrapper's, and the
shipped model really solves the copy task with the attention the task calls for (measured, not assumed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import explorer
from explorer import textbook
from explorer.textbook.model import GPT, GPTConfig, sinusoidal_table


@pytest.fixture(scope="module")
def lm():
    return textbook.load()


@pytest.fixture(scope="module")
def random_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab=list(textbook.VOCAB), block_size=17, n_layer=2, n_head=4, n_embd=32)).eval()


@pytest.fixture(scope="module")
def trace(lm):
    return lm.generate("3 1 4 1 5 9 2 |", max_new_tokens=7, temperature=0.7, top_k=5, seed=1)


def test_attention_equals_torch_sdpa(random_gpt):
    idx = torch.randint(0, 11, (3, 15))
    with torch.no_grad():
        random_gpt(idx)
    for seen in random_gpt.internals():
        expected = F.scaled_dot_product_attention(seen.query, seen.key, seen.value, is_causal=True)
        torch.testing.assert_close(seen.output, expected, atol=1e-5, rtol=1e-5)
        # the exposed pieces are the formula's: scores = QKᵀ/√d_k, weights = softmax(scores + mask)
        d_k = seen.query.shape[-1]
        torch.testing.assert_close(seen.scores, seen.query @ seen.key.transpose(-2, -1) / math.sqrt(d_k))
        torch.testing.assert_close(seen.weights, torch.softmax(seen.scores + seen.mask, dim=-1))
        future = torch.arange(15)[None, :] > torch.arange(15)[:, None]
        assert torch.equal(seen.mask, torch.where(future, float("-inf"), 0.0))


def test_sinusoidal_table_matches_the_formula():
    table = sinusoidal_table(50, 16).double().numpy()
    assert np.all(table[0, 0::2] == 0) and np.all(table[0, 1::2] == 1)  # pos 0: sin 0, cos 0
    for pos, i in [(1, 0), (7, 3), (49, 5)]:
        angle = pos / 10000 ** (2 * i / 16)
        assert table[pos, 2 * i] == pytest.approx(math.sin(angle), abs=1e-6)
        assert table[pos, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-6)
    assert table[1, 0] == pytest.approx(math.sin(1.0), abs=1e-6)


def test_positional_encoding_is_added_to_the_embeddings(random_gpt):
    idx = torch.tensor([[0, 0, 0]])
    x = random_gpt.embed(idx) + random_gpt.PE[:3]
    # the same token at three positions differs by exactly the table's rows
    torch.testing.assert_close(x[0, 1] - x[0, 0], random_gpt.PE[1] - random_gpt.PE[0])
    assert "PE" not in random_gpt.state_dict()  # a formula, not a weight


def test_trace_attention_equals_the_models_own_weights(lm, trace):
    with torch.no_grad():
        lm.model(torch.tensor([trace.token_ids]))
    for layer, seen in enumerate(lm.model.internals()):
        for head in range(trace.n_heads):
            np.testing.assert_allclose(trace.attention(layer, head), seen.weights[0, head].numpy(), atol=1e-5)
        np.testing.assert_allclose(trace.layers[layer].value, seen.value[0].numpy())


def test_trace_is_a_trace_like_the_wrappers(lm, trace, tiny_trace):
    assert trace.tokens == "3 1 4 1 5 9 2 |".split() + trace.tokens[8:]
    assert trace.n_prompt == 8 and trace.n_tokens == 15 and len(trace.steps) == 7
    assert (trace.n_layers, trace.n_heads) == (lm.model.config.n_layer, lm.model.config.n_head)
    for layer in range(trace.n_layers):
        for head in range(trace.n_heads):
            a = trace.attention(layer, head)
            np.testing.assert_allclose(a.sum(axis=1), 1, atol=1e-5)
            assert np.all(np.triu(a, 1) == 0)
    assert trace.layers[0].scaling == pytest.approx(1 / math.sqrt(lm.model.config.head_dim))
    assert trace.positional.kind == "sinusoidal"
    np.testing.assert_allclose(trace.positional.table, sinusoidal_table(15, lm.model.config.n_embd).numpy())
    assert type(trace.model) is type(tiny_trace.model)  # the record LanguageModel.info() gives, every field set
    assert None not in trace.model.to_dict().values() and None not in tiny_trace.model.to_dict().values()
    assert trace.model.parameters == sum(p.numel() for p in lm.model.parameters())


def test_steps_are_computed_from_the_model(lm, trace):
    ids = torch.tensor([trace.token_ids])
    with torch.no_grad():
        logits = lm.model(ids)[0][0]
    for step in trace.steps:
        probs = torch.softmax(logits[step.position - 1].double(), -1).numpy()
        assert trace.tokens[step.position] == step.token == lm.vocab[step.token_id]
        assert step.prob == pytest.approx(probs[step.token_id], abs=1e-5)
        assert step.rank == 1 + int((probs > probs[step.token_id]).sum())
        assert step.entropy == pytest.approx(-(probs * np.log(np.maximum(probs, 1e-30))).sum(), abs=1e-4)
        # sampling distribution: temperature 0.7, then the 5 best tokens only
        scores = logits[step.position - 1].double() / 0.7
        kept = scores >= torch.topk(scores, 5).values[-1]
        sampling = torch.softmax(scores.masked_fill(~kept, -math.inf), -1).numpy()
        assert step.sampling_prob == pytest.approx(sampling[step.token_id], abs=1e-5)
        assert len([c for c in step.sampling_top_k if c.prob > 0]) <= 5


def test_top_p_keeps_the_smallest_set_reaching_p(lm):
    from explorer.textbook.lm import _filter_top_p

    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_filter_top_p(scores, 0.7))[0].tolist()
    assert kept == [True, True, False, False]
    assert torch.isfinite(_filter_top_p(scores, 0.4))[0].tolist() == [True, False, False, False]


def test_save_and_load_keep_everything(trace, tmp_path):
    path = tmp_path / "copy.trace"
    trace.save(path)
    loaded = explorer.load_trace(path)
    assert loaded.tokens == trace.tokens and loaded.token_ids == trace.token_ids
    assert loaded.n_prompt == trace.n_prompt and loaded.model == trace.model and loaded.steps == trace.steps
    for layer in range(trace.n_layers):
        np.testing.assert_array_equal(loaded.layers[layer].value, trace.layers[layer].value)
        for head in range(trace.n_heads):
            np.testing.assert_array_equal(loaded.attention(layer, head), trace.attention(layer, head))
    np.testing.assert_array_equal(loaded.positional.table, trace.positional.table)


def test_greedy_generation_is_repeatable_and_seeded_sampling_too(lm):
    assert lm.generate("1 2 3 4 |", 4).tokens == lm.generate("1 2 3 4 |", 4).tokens
    a = lm.generate("1 2 3 4 |", 4, temperature=5.0, seed=7).tokens
    assert a == lm.generate("1 2 3 4 |", 4, temperature=5.0, seed=7).tokens


def test_bad_prompts_say_what_is_wrong(lm):
    with pytest.raises(explorer.SettingsError, match="not in the vocabulary"):
        lm.trace("1 2 x")
    with pytest.raises(explorer.SettingsError, match="do not fit"):
        lm.generate("1 2 3 4 5 6 7 8 |", max_new_tokens=20)


def test_trained_model_solves_the_copy_task(lm):
    assert textbook.accuracy(lm.model, n=400, seed=2024) >= 0.95


def test_the_last_layer_has_a_head_that_reads_the_source_digit(lm):
    """Measured on the traces' attention: from position L + j, the weight on position j (the digit to copy)."""
    task, rng = textbook.CopyTask(), np.random.default_rng(99)
    last = lm.model.config.n_layer - 1
    weights = np.zeros(lm.model.config.n_head)
    for _ in range(50):
        tokens = task.sample(rng)
        length = tokens.index(textbook.SEPARATOR)
        trace = lm.generate(task.prompt(tokens), max_new_tokens=length)
        weights += [textbook.weight_on_source(trace.attention(last, h), length) for h in range(trace.n_heads)]
    weights /= 50
    assert weights.max() >= 0.5, weights
    # and the source is not simply where any head looks: the same heads barely look one place later
    assert weights.max() > 0.3 + _weight_one_later(lm, last, int(weights.argmax()))


def _weight_one_later(lm, layer: int, head: int) -> float:
    rng = np.random.default_rng(5)
    task, shifted = textbook.CopyTask(), []
    for _ in range(20):
        tokens = task.sample(rng)
        length = tokens.index(textbook.SEPARATOR)
        a = lm.trace(tokens).attention(layer, head)
        shifted.append(np.mean([a[q, s + 1] for q, s in textbook.source_positions(length) if s + 1 <= q]))
    return float(np.mean(shifted))


def test_a_few_training_steps_reduce_the_loss():
    _, losses = textbook.train(steps=60, warmup=10, progress=False, seed=1)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.2


def test_learning_rate_warms_up_then_decays():
    from explorer.textbook.train import learning_rate

    lrs = [learning_rate(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(0.1, abs=0.01)


def test_checkpoint_loads_without_pickle(tmp_path, random_gpt):
    from explorer.textbook.checkpoint import load, save

    path = save(random_gpt, tmp_path / "m.safetensors", losses=[2.0, 1.0])
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    loaded = load(path)
    for (name, a), b in zip(random_gpt.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert textbook.read_record(path)["losses"] == [2.0, 1.0]
