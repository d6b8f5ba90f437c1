"""Batched capture: a list of prompts of different lengths (one that stops early at its end-of-text token) gives the
traces the prompts give one at a time — the same tokens, attention to 1e-5, steps, lens and surprisal — on models
with GQA, a sliding window, ALiBi, two rotary bases and the hooks path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import explorer
from explorer.errors import SettingsError
from tiny_models import Ids, tiny_model

PROMPTS = ["5 9 14 3 22 7 30 11 4 17 2 40", "8 1 6", "12 33 2 9 4 61 7", "3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 9"]
# GQA (llama), sliding window (mistral), soft-caps + sliding (gemma2), two rotary bases + sliding (gemma3),
# ALiBi from the model's eager weights (bloom), the hooks path (gpt_neo), learned positions (gpt2)
FAMILIES = ["llama", "mistral", "gemma2", "gemma3_text", "bloom", "gpt_neo", "gpt2"]


def _lm(family: str):
    if family == "gpt_neo":  # its family default does not shrink: conftest's own config
        import transformers as tf

        from conftest import tiny_config

        torch.manual_seed(0)
        model = tf.AutoModelForCausalLM.from_config(tiny_config("gpt_neo")).eval()
        model.generation_config.eos_token_id = None
    else:
        model = tiny_model(family)
    return explorer.wrap(model, Ids(), name=family)


def _early_eos(lm) -> int:
    """A token the second prompt generates at its third step, used as end-of-text: that row stops early."""
    alone = lm.generate(PROMPTS[1], max_new_tokens=8, lens=None, progress=False)
    return alone.steps[2].token_id


def assert_same_trace(got, want):
    assert got.token_ids == want.token_ids and got.n_prompt == want.n_prompt and got.tokens == want.tokens
    for layer in range(want.n_layers):
        np.testing.assert_allclose(got.attention(layer), want.attention(layer), atol=1e-5)
    assert [(s.token_id, s.rank) for s in got.steps] == [(s.token_id, s.rank) for s in want.steps]
    for a, b in zip(got.steps, want.steps):
        np.testing.assert_allclose([a.prob, a.entropy, a.sampling_prob], [b.prob, b.entropy, b.sampling_prob],
                                   rtol=1e-4, atol=1e-6)
        assert [c.token_id for c in a.top_k] == [c.token_id for c in b.top_k]
    np.testing.assert_allclose(got.surprisal, want.surprisal, rtol=1e-4, atol=1e-5)
    assert (got.lens is None) == (want.lens is None)
    if want.lens is not None:
        np.testing.assert_array_equal(got.lens.positions, want.lens.positions)
        np.testing.assert_array_equal(got.lens.top_ids, want.lens.top_ids)
        np.testing.assert_allclose(got.lens.top_probs, want.lens.top_probs, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got.lens.next_prob, want.lens.next_prob, rtol=1e-4, atol=1e-6)
    if want.value_norms is not None:
        np.testing.assert_allclose(got.value_norms, want.value_norms, rtol=1e-4, atol=1e-6)
    assert got.positional.kind == want.positional.kind


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_equals_each_prompt_alone(family):
    lm = _lm(family)
    eos = _early_eos(lm)
    settings = dict(max_new_tokens=8, eos_token_id=eos, progress=False)
    together = lm.generate(PROMPTS, batch_size=4, **settings)
    assert isinstance(together, list) and len(together) == len(PROMPTS)
    for prompt, got in zip(PROMPTS, together):
        assert_same_trace(got, lm.generate(prompt, **settings))
    assert together[1].n_generated <= 3 and together[1].token_ids[-1] == eos  # stopped at its own end
    assert max(t.n_generated for t in together) == 8  # while the others went on


def test_seeded_sampling_gives_each_prompt_its_own_draws_in_any_batch():
    lm = _lm("llama")
    settings = dict(max_new_tokens=10, temperature=1.3, top_k=40, top_p=0.95, seed=11, progress=False)
    together = lm.generate(PROMPTS, **settings)
    in_pairs = lm.generate(PROMPTS[::-1], batch_size=2, **settings)[::-1]
    for prompt, got, other in zip(PROMPTS, together, in_pairs):
        alone = lm.generate(prompt, **settings)
        assert_same_trace(got, alone)
        assert other.token_ids == alone.token_ids


def test_reading_a_batch_of_texts_equals_reading_each_with_the_lens_everywhere():
    lm = _lm("qwen3")
    together = lm.trace(PROMPTS, lens="all", batch_size=3, progress=False)
    for prompt, got in zip(PROMPTS, together):
        assert_same_trace(got, lm.trace(prompt, lens="all", progress=False))
    ids = [[int(t) for t in p.split()] for p in PROMPTS]
    for got, want in zip(lm.trace_ids(ids, progress=False), together):
        assert got.token_ids == want.token_ids


def test_a_batch_reports_progress_per_prompt_and_keeps_the_order():
    lm = _lm("llama")
    seen: dict[int, list[str]] = {}
    traces = lm.generate(PROMPTS, max_new_tokens=4, batch_size=2, progress=False,
                         on_token=lambda row, done, total, text: seen.setdefault(row, []).append(text))
    assert sorted(seen) == [0, 1, 2, 3]
    for row, trace in enumerate(traces):
        assert trace.n_prompt == len(PROMPTS[row].split())
        assert seen[row] == [s.token for s in trace.steps]


def test_each_trace_is_handed_over_before_its_lens_and_gets_it_before_the_call_returns():
    lm = _lm("llama")
    events: list = []

    def captured(row, trace):  # what a view sees at this moment: attention and steps, no lens yet
        events.append(("captured", row, trace, trace.lens, trace.lens_pending, trace.attention(1, 0).copy()))

    traces = lm.generate(PROMPTS[:3], max_new_tokens=4, batch_size=3, progress=False,
                         on_status=lambda said: events.append(said) if "logit lens" in said else None,
                         on_capture=captured, on_trace=lambda row, trace: events.append(("trace", row, trace)))
    # every row's capture first, then one lens for the whole batch, then the complete traces
    assert [e if isinstance(e, str) else e[0] for e in events] == [
        "captured", "captured", "captured", "reading the logit lens", "trace", "trace", "trace"]
    early = {e[1]: e for e in events if e[0] == "captured"}
    for row, trace in enumerate(traces):
        _, _, handed, lens_then, pending_then, attention_then = early[row]
        assert handed is trace and lens_then is None and pending_then  # the same object, lens still to come
        assert trace.lens is not None and not trace.lens_pending  # and it came before the call returned
        np.testing.assert_array_equal(attention_then, trace.attention(1, 0))
        assert_same_trace(trace, lm.generate(PROMPTS[row], max_new_tokens=4, progress=False))  # a batch's lens is each row's
    alone, early_alone = [], []
    got = lm.generate(PROMPTS[0], max_new_tokens=4, progress=False, on_trace=alone.append,
                      on_capture=lambda t: early_alone.append(t.lens))
    assert got is alone[0] and early_alone == [None] and got.lens is not None
    bare = []
    assert not lm.generate(PROMPTS[0], max_new_tokens=4, lens=None, progress=False,
                           on_capture=lambda t: bare.append(t.lens_pending)).lens_pending and bare == [False]


def test_a_padded_batch_leaves_no_padding_in_any_trace():
    lm = _lm("llama")
    short, long = lm.generate([PROMPTS[1], PROMPTS[3]], max_new_tokens=3, progress=False)
    assert short.n_tokens == 3 + 3 and short.token_ids[:3] == [8, 1, 6]
    assert all(layer.query.shape[1] == short.n_tokens for layer in short.layers)
    assert short.value_norms.shape[-1] == short.n_tokens


@pytest.mark.parametrize("bad, said", [([], "empty"), (["1 2", 3], "prompt 1"), (["1 2", ""], "prompt 1")])
def test_bad_lists_are_refused_with_a_sentence(bad, said):
    lm = _lm("llama")
    with pytest.raises(SettingsError, match=said):
        lm.generate(bad, max_new_tokens=2, progress=False)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_a_nonsense_batch_size_is_refused(size):
    lm = _lm("llama")
    with pytest.raises(SettingsError, match="batch_size"):
        lm.generate(PROMPTS, max_new_tokens=2, batch_size=size, progress=False)
    with pytest.raises(SettingsError, match="batch_size"):
        lm.trace(PROMPTS, batch_size=size, progress=False)


def test_nothing_waits_for_the_device_inside_the_decoding_loop(monkeypatch):
    """No .cpu(), .numpy(), .item() or .tolist() from our own code while transformers' generate runs: on a GPU each
    is a synchronisation. transformers itself hands the streamer tokens it copied; those are not ours."""
    lm = _lm("llama")
    inside = {"loop": False}
    original_generate = lm.model.generate

    def watched_generate(*args, **kwargs):
        inside["loop"] = True
        try:
            return original_generate(*args, **kwargs)
        finally:
            inside["loop"] = False

    def refusing(name):
        original = getattr(torch.Tensor, name)

        def method(self, *args, **kwargs):
            import sys

            caller = sys._getframe(1).f_globals.get("__name__", "")
            if inside["loop"] and caller.startswith("explorer"):
                raise AssertionError(f"{caller} called Tensor.{name}() inside the decoding loop")
            return original(self, *args, **kwargs)

        return method

    monkeypatch.setattr(lm.model, "generate", watched_generate)
    for name in ("cpu", "numpy", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refusing(name))
    for settings in ({}, {"temperature": 0.9, "seed": 1}, {"ablate": [(0, 1)], "keep_values": True}):
        traces = lm.generate(PROMPTS[:2], max_new_tokens=5, lens="all", progress=False,
                             on_token=lambda *a: None, **settings)
        assert [t.n_generated for t in traces] == [5, 5]
    inside["loop"] = True  # the guard itself works: the same call from our code fails
    with pytest.raises(AssertionError, match="inside the decoding loop"):
        from explorer.capture import attention

        exec("x.cpu()", vars(attention) | {"x": torch.zeros(1)})
