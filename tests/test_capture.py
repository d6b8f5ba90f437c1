"""Captured attention against transformers' own eager attention, and generated tokens against plain generate."""

import numpy as np
import pytest
import torch

from conftest import ARCHITECTURES, make_tiny_lm


def eager_attentions(lm, token_ids):
    """Attention weights from transformers' eager implementation over the whole sequence, one forward pass."""
    model = lm.model
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(torch.tensor([token_ids], device=model.device), output_attentions=True)
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)
    return [a[0].float().cpu().numpy() for a in out.attentions]


def max_attention_error(trace, reference):
    return max(
        float(np.abs(trace.attention(layer, head) - reference[layer][head]).max())
        for layer in range(trace.n_layers)
        for head in range(trace.n_heads)
    )


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_captured_attention_equals_eager_and_tokens_equal_plain_generate(arch):
    lm = make_tiny_lm(arch)
    trace = lm.generate("Attention!", max_new_tokens=9, progress=False)
    reference = eager_attentions(lm, trace.token_ids)
    assert trace.n_layers == len(reference)
    assert trace.n_heads == reference[0].shape[0] == lm.model.config.num_attention_heads  # query heads
    assert trace.n_tokens == reference[0].shape[-1] == trace.n_prompt + 9
    assert max_attention_error(trace, reference) < 1e-5
    prompt = torch.tensor([trace.token_ids[: trace.n_prompt]])
    plain = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=9, do_sample=False)
    assert plain[0].tolist() == trace.token_ids


@pytest.mark.parametrize("arch", ["llama", "gpt_neo"])
def test_sampling_with_a_seed_matches_plain_generate_and_repeats(arch):
    lm = make_tiny_lm(arch)
    settings = dict(temperature=1.3, top_k=20, top_p=0.9)
    trace = lm.generate("seeded", max_new_tokens=12, seed=7, progress=False, **settings)
    again = lm.generate("seeded", max_new_tokens=12, seed=7, progress=False, **settings)
    assert trace.token_ids == again.token_ids
    torch.manual_seed(7)
    prompt = torch.tensor([trace.token_ids[: trace.n_prompt]])
    plain = lm.model.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=True, **settings
    )
    assert plain[0].tolist() == trace.token_ids


def test_read_only_trace_equals_eager():
    lm = make_tiny_lm("qwen2")
    trace = lm.trace("just reading this text")
    assert trace.n_generated == 0 and trace.n_tokens == trace.n_prompt
    assert max_attention_error(trace, eager_attentions(lm, trace.token_ids)) < 1e-5


def test_float16_storage_stays_close_and_halves_memory():
    lm = make_tiny_lm("llama")
    exact = lm.generate("compact", max_new_tokens=6, precision="float32", progress=False)
    half = lm.generate("compact", max_new_tokens=6, precision="float16", progress=False)
    def attention_bytes(trace):
        return sum(a.nbytes for layer in trace.layers for a in layer.tensors().values())

    assert attention_bytes(half) * 2 == attention_bytes(exact)
    assert max_attention_error(half, [np.stack([exact.attention(l, h) for h in range(exact.n_heads)])
                                      for l in range(exact.n_layers)]) < 5e-3


def test_capture_leaves_the_model_as_it_was():
    lm = make_tiny_lm("llama")
    before = lm.model.config._attn_implementation
    lm.generate("restore", max_new_tokens=3, progress=False)
    assert lm.model.config._attn_implementation == before
    assert not hasattr(lm.model.config, "_attention_explorer_inner")
    # and a model loaded with eager attention keeps eager outputs and still records
    lm.model.set_attn_implementation("eager")
    trace = lm.generate("restore", max_new_tokens=3, progress=False)
    assert lm.model.config._attn_implementation == "eager"
    assert max_attention_error(trace, eager_attentions(lm, trace.token_ids)) < 1e-5


def test_values_are_kept_on_request():
    lm = make_tiny_lm("llama")
    trace = lm.generate("values", max_new_tokens=3, keep_values=True, progress=False)
    layer = trace.layers[0]
    assert layer.value.shape == layer.key.shape
    # the last value row is v_proj of the last hidden state entering layer 0 (after its input norm)
    with torch.no_grad():
        hidden = lm.model.model.embed_tokens(torch.tensor([trace.token_ids]))
        normed = lm.model.model.layers[0].input_layernorm(hidden)
        v = lm.model.model.layers[0].self_attn.v_proj(normed)[0]
    expected = v.view(trace.n_tokens, layer.key.shape[0], -1).transpose(0, 1).numpy()
    np.testing.assert_allclose(layer.value, expected, atol=1e-5)


def test_generate_keywords_pass_through_to_transformers():
    lm = make_tiny_lm("llama")
    trace = lm.generate("pass", max_new_tokens=8, repetition_penalty=1.8, progress=False)
    prompt = torch.tensor([trace.token_ids[: trace.n_prompt]])
    plain = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                              repetition_penalty=1.8)
    assert plain[0].tolist() == trace.token_ids
    assert trace.settings["repetition_penalty"] == 1.8
    # an eos token stops generation early, as in transformers
    stop_at = trace.token_ids[trace.n_prompt + 2]
    stopped = lm.generate("pass", max_new_tokens=8, repetition_penalty=1.8, eos_token_id=stop_at, progress=False)
    assert stopped.token_ids[-1] == stop_at and stopped.n_generated <= 3
    assert stopped.attention(0, 0).shape == (stopped.n_tokens, stopped.n_tokens)


@pytest.mark.slow
def test_default_model_attention_equals_eager(default_lm):
    trace = default_lm.generate("The capital of France is", max_new_tokens=12, progress=False)
    assert trace.settings["precision"] == "float32"
    assert trace.n_heads == 9 and trace.n_layers == 30 and trace.layers[0].key.shape[0] == 3  # GQA
    assert max_attention_error(trace, eager_attentions(default_lm, trace.token_ids)) < 1e-4
    prompt = torch.tensor([trace.token_ids[: trace.n_prompt]])
    plain = default_lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                                      do_sample=False)
    assert plain[0].tolist() == trace.token_ids


def test_position_store_equals_concatenation_when_the_run_outgrows_or_undershoots_what_was_announced():
    import torch

    from explorer.capture.attention import PositionStore

    torch.manual_seed(0)
    for capacity, n_layers in [(5, 2), (40, 4), (0, 0)]:  # too small, too large (trimmed copy), nothing announced
        store = PositionStore(torch.float32, capacity, n_layers)
        chunks = {layer: [torch.randn(2, 3, n, 4) for n in (7, 1, 1, 1)] for layer in range(3)}  # 2 batch rows
        for step in range(4):
            for layer in range(3):
                store.append(layer, chunks[layer][step])
        for layer in range(3):
            whole = torch.cat(chunks[layer], dim=2).numpy()
            for row in range(2):
                got = store.take(layer, row)
                np.testing.assert_array_equal(got, whole[row])
                assert got.shape == (3, 10, 4) and got.base is None  # a batch row is its own copy
            np.testing.assert_array_equal(store.take(layer, 1, start=2, stop=9), whole[1, :, 2:9])
    one = PositionStore(torch.float32, 40, 1)  # one row: a view of the buffer while most of it is used
    one.append(0, torch.randn(1, 3, 36, 4))
    assert one.take(0).base is not None and one.take(0, stop=10).base is None


def test_a_16_bit_model_keeps_its_dtype_on_the_device_and_the_trace_its_precision():
    import torch

    from explorer.capture.attention import PositionStore

    x = torch.randn(1, 2, 5, 4).to(torch.bfloat16)
    store = PositionStore(torch.float32, 5, 1)
    store.append(0, x)
    assert store.tensor.dtype == torch.bfloat16  # half the device memory, and exact: bf16 widens to float32
    got = store.take(0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x[0].float().numpy())
