"""Today's architectures, each a tiny random model built from its family's own default config (tiny_models.py):
capture against transformers' eager attention and plain generate, positions per layer against each config's own
declaration and the model's own pre-rotary projections, and the lens on a model whose blocks have an odd name."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import explorer
from explorer.capture.shapes import text_config
from tiny_models import Ids, eager_attentions, tiny_model


PROMPT = "1 5 9 14 3 22 7 30 11 4 17 2"
# a family of each variant: GQA, learned, partial and interleaved rotary, sinks, two bases, NoPE layers, chunked,
# ALiBi (BLOOM, MPT), MoE, hybrid linear/full attention, q/k norm, soft-caps, decoders of the BERT kind
FAMILIES = ["llama", "gpt2", "gpt_neox", "gptj", "gpt_oss", "gemma2", "gemma3_text", "smollm3", "cohere2",
            "llama4_text", "bloom", "mpt", "opt", "phi", "qwen3", "qwen3_next", "mixtral", "olmo2", "starcoder2",
            "stablelm", "gpt_bigcode", "granite", "xglm", "biogpt", "bert", "lfm2", "nemotron_h", "persimmon"]


OLD_CACHE_NAME: dict[str, list[str]] = {}  # each family's warnings of a KV cache passed by its old name


@pytest.fixture(scope="module")
def traced():
    """(model, trace) of each family, made once."""
    made = {}

    def get(family):
        if family not in made:
            model = tiny_model(family)
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                made[family] = model, explorer.wrap(model, Ids(), name=family).generate(
                    PROMPT, max_new_tokens=6, progress=False)
            OLD_CACHE_NAME[family] = [str(w.message) for w in said if "past_key_values" in str(w.message)]
        return made[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_every_head_equals_eager_and_tokens_equal_plain_generate(family, traced):
    model, trace = traced(family)
    prompt = [int(t) for t in PROMPT.split()]
    with torch.no_grad():
        plain = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                               max_new_tokens=6, do_sample=False, pad_token_id=0)[0].tolist()
    assert trace.token_ids == plain
    reference = eager_attentions(model, plain)
    assert len(reference) == trace.n_layers
    for layer in range(trace.n_layers):
        for head in range(trace.n_heads):
            np.testing.assert_allclose(trace.attention(layer, head), reference[layer][head], atol=1e-5)
    if family == "mpt":  # no KV cache: it reads the whole text at every step, and says so
        assert trace.lens is None and "KV cache" in trace.notes[0]
        return
    assert trace.lens is not None  # the default lens found its blocks and final norm
    if family in NO_ATTRIBUTION:  # and the attribution says why it is missing
        assert trace.attribution is None and len(trace.notes) == 1 and NO_ATTRIBUTION[family] in trace.notes[0]
        return
    assert trace.notes == []
    with torch.no_grad():  # the parts of each step's logit add up to the model's own logit of the token
        logits = model(torch.tensor([plain]), use_cache=False).logits[0].double()
    capped = getattr(text_config(model), "final_logit_softcapping", None)
    for step in trace.steps:
        shares = trace.logit_attribution(step.index)
        assert shares.total == pytest.approx(shares.logit, abs=1e-3)
        if not capped:  # (the attribution is of the logit before a final soft-cap)
            assert shares.logit == pytest.approx(float(logits[step.position - 1, step.token_id]), abs=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_capture_passes_the_kv_cache_by_its_current_name(family, traced):
    """transformers 5.25 renamed `past_key_values` to `cache` and drops the old name in 5.40: a capture that
    passed it would lose its last token's attention row then."""
    traced(family)
    assert OLD_CACHE_NAME[family] == []


# families whose logit attribution is missing, and the reason their note gives
NO_ATTRIBUTION = {"bert": "more than linear maps",  # BERT's head: dense, activation, then its norm
                  "qwen3_next": "output projection", "nemotron_h": "output projection"}  # blocks without attention


def test_sinks_take_their_share_of_every_row(traced):
    _, trace = traced("gpt_oss")
    store = trace.layers[0]
    assert store.sinks is not None
    rows = trace.attention(0, 1)
    share = store.sink_share(1, 0, trace.n_tokens)
    np.testing.assert_allclose(rows.sum(-1) + share, 1, atol=1e-6)
    assert (share > 0).all()


def test_positions_per_layer_follow_each_config(traced):
    model, trace = traced("gemma3_text")  # rotary on every layer, base by layer type: "none" here was the bug
    config = model.config
    assert trace.positional.layer_kinds == ["rotary"] * trace.n_layers
    for layer, params in enumerate(trace.positional.layer_params):
        assert params["theta"] == config.rope_parameters[config.layer_types[layer]]["rope_theta"]
        assert params["evidence"] == "measured"
    assert len({p["theta"] for p in trace.positional.layer_params}) == 2
    for family in ("smollm3", "llama4_text"):  # no_rope_layers[i] == 1: layer i rotates
        model, trace = traced(family)
        expected = ["rotary" if use else "none" for use in model.config.no_rope_layers[: trace.n_layers]]
        assert trace.positional.layer_kinds == expected and trace.positional.kind == "mixed"
    model, trace = traced("gptj")  # rotary on rotary_dim dims of each head, neighbours paired
    assert {p["rotary_dim"] for p in trace.positional.layer_params} == {model.config.rotary_dim}
    assert {p["convention"] for p in trace.positional.layer_params} == {"interleaved"}
    for family in ("gpt2", "opt"):
        assert traced(family)[1].positional.layer_kinds == ["absolute"] * 2


@pytest.mark.parametrize("family", ["bloom", "mpt"])
def test_alibi_slopes_are_the_models_own(family, traced):
    model, trace = traced(family)
    assert trace.positional.kind == "alibi" and set(trace.positional.layer_kinds) == {"alibi"}
    n_heads = trace.n_heads
    if family == "bloom":
        from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

        expected = _get_alibi_slopes(n_heads, torch.device("cpu")).numpy()
    else:
        from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

        bias = build_mpt_alibi_tensor(n_heads, 8)[:, 0]
        expected = (bias[:, -1] - bias[:, -2]).numpy()
    for params in trace.positional.layer_params:
        np.testing.assert_allclose(params["slopes"], expected, rtol=1e-5)


def pre_rotary(model, ids: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each layer's queries and keys before rotary, by hooks on q_proj and k_proj (Llama), [H, T, d]."""
    seen: list[tuple] = []
    handles = []
    config = model.config
    dim = config.hidden_size // config.num_attention_heads
    for block in model.model.layers:
        out = {}
        handles.append(block.self_attn.q_proj.register_forward_hook(lambda m, a, o, out=out: out.update(q=o)))
        handles.append(block.self_attn.k_proj.register_forward_hook(lambda m, a, o, out=out: out.update(k=o)))
        seen.append(out)
    try:
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [(o["q"][0].reshape(len(ids), -1, dim).transpose(0, 1).numpy(),
             o["k"][0].reshape(len(ids), -1, dim).transpose(0, 1).numpy()) for o in seen]


def test_no_position_undoes_rotary_exactly(traced):
    model, trace = traced("llama")
    config = model.config
    group = config.num_attention_heads // config.num_key_value_heads
    for layer, (q, k) in enumerate(pre_rotary(model, trace.token_ids)):
        for head in range(trace.n_heads):
            scores = q[head] @ k[head // group].T * trace.layers[layer].scaling
            scores = np.where(np.tri(trace.n_tokens, dtype=bool), scores, -np.inf)
            expected = np.exp(scores - scores.max(-1, keepdims=True))
            expected /= expected.sum(-1, keepdims=True)
            np.testing.assert_allclose(trace.attention(layer, head, kind="no_position"), expected, atol=1e-5)
    assert not np.allclose(trace.attention(0, 0, kind="no_position"), trace.attention(0, 0))


def test_no_position_drops_alibi(traced):
    """BLOOM's own attention with its alibi tensor replaced by zeros, against the captured weights with the bias
    taken out."""
    model, trace = traced("bloom")
    ids = trace.token_ids
    weights = []

    def zero_bias(module, args, kwargs):
        kwargs["alibi"] = torch.zeros_like(kwargs["alibi"])
        return args, kwargs

    handles = [block.self_attention.register_forward_pre_hook(zero_bias, with_kwargs=True)
               for block in model.transformer.h]
    handles += [block.self_attention.register_forward_hook(lambda m, a, o: weights.append(o[1][0]))
                for block in model.transformer.h]
    try:
        model.set_attn_implementation("eager")
        with torch.no_grad():
            model(torch.tensor([ids]), output_attentions=True, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    for layer in range(trace.n_layers):
        for head in range(trace.n_heads):
            np.testing.assert_allclose(trace.attention(layer, head, kind="no_position"),
                                       weights[layer][head].numpy(), atol=1e-5)


def test_no_position_is_refused_with_a_sentence_where_positions_come_at_the_input(traced):
    _, trace = traced("gpt2")
    assert "no_position" not in trace.kinds
    with pytest.raises(ValueError, match="added to the input"):
        trace.attention(0, 0, kind="no_position")


def test_the_default_generate_finds_blocks_under_an_odd_name():
    """A Llama whose block list and final norm live under names no list knows: the lens comes, and equals the
    model's own output at the last layer."""
    model = tiny_model("llama")
    base = model.model
    holder = torch.nn.Module()
    holder.stack, holder.closing = base.layers, base.norm
    del base.layers, base.norm
    base.holder = holder
    base.__class__ = type("OddLlamaModel", (type(base),), {
        "layers": property(lambda self: self.holder.stack), "norm": property(lambda self: self.holder.closing)})
    trace = explorer.wrap(model, Ids(), name="odd").generate(PROMPT, max_new_tokens=4, progress=False)
    assert trace.lens is not None and trace.notes == []
    for step in trace.steps:
        last = trace.lens.top_k(-1, step.position - 1)[0]
        assert last.token_id == step.top_k[0].token_id and abs(last.prob - step.top_k[0].prob) < 1e-5


def test_a_model_without_findable_parts_still_generates_and_says_why():
    """The base model's output scaled by a hook on the base model itself: no single module maps the last block's
    output to what lm_head reads. Default generate still gives a trace, with a note; lens="all" is refused."""
    model = tiny_model("llama")

    def doubled(module, args, output):
        output.last_hidden_state = output.last_hidden_state * 2
        return output

    model.model.register_forward_hook(doubled)
    lm = explorer.wrap(model, Ids(), name="doubled")
    trace = lm.generate(PROMPT, max_new_tokens=3, progress=False)
    assert len(trace.steps) == 3 and trace.lens is None
    assert trace.notes and "logit lens" in trace.notes[0] and "lm_head" in trace.notes[0]
    with pytest.raises(explorer.errors.SettingsError, match="lens=None"):
        lm.trace(PROMPT, lens="all")
