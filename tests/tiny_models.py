"""Tiny random configs of (nearly) every causal-LM family transformers ships, made from each family's own default
config by shrinking its sizes, so that a test or the architecture survey can run them all in seconds.

`tiny_config(model_type)` keeps what makes a family itself (its layer types, sinks, ALiBi, chunked or sliding
attention, MLA, MoE routing) and makes everything small: hidden 32, 2-4 layers, 4 query heads over 2 key/value
heads, a vocabulary of 96.
"""

from __future__ import annotations

import transformers as tf
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

VOCAB = 96
MAX_PARAMETERS = 2_000_000
# sizes by the names configs give them (attribute_map turns GPT-2's n_embd and the like into these)
_SMALL = dict(
    hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=VOCAB,
    max_position_embeddings=128, n_positions=128, max_seq_len=128, head_dim=8, seq_length=128,
    # mixture of experts
    num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
    n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1, shared_expert_intermediate_size=32,
    moe_num_experts=4, moe_topk=2, expert_intermediate_size=32,
    # multi-head latent attention (DeepSeek)
    kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
    # windows and chunks shorter than the test texts, so they matter
    sliding_window=5, attention_chunk_size=6, window_size=5,
    rotary_dim=4,  # GPT-J, CodeGen: rotary on part of each head
)
# layer-type words that differ in what attention sees; a tiny model keeps one layer of each
_LAYERED = ("layer_types", "no_rope_layers", "attention_types_list", "mlp_only_layers")


def causal_lm_types() -> list[str]:
    """Every model_type transformers maps to a causal-LM class."""
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _pattern(values: list, n: int) -> list:
    """n entries of a per-layer list that keep each distinct value at least once (in their first order)."""
    distinct = list(dict.fromkeys(map(repr, values)))
    by_repr = {repr(v): v for v in values}
    out = [by_repr[r] for r in distinct][:n]
    while len(out) < n:
        out.append(values[len(out) % len(values)])
    return out


def tiny_config(model_type: str, n_layers: int = 2):
    """A small config of `model_type` (a key of transformers' CONFIG_MAPPING) built from its defaults."""
    config_class = CONFIG_MAPPING[model_type]
    default = config_class()
    text = getattr(default, "get_text_config", lambda: default)()
    sizes = {k: v for k, v in _SMALL.items() if hasattr(text, k) and getattr(text, k) is not None}
    old_layers = getattr(text, "num_hidden_layers", None)
    layered = {}
    for name in _LAYERED:
        values = getattr(text, name, None)
        if isinstance(values, list) and values and old_layers and len(values) == old_layers:
            n_layers = max(n_layers, min(4, len(set(map(repr, values)))))
            layered[name] = values
    for name, values in layered.items():
        sizes[name] = _pattern(values, n_layers)
    sizes["num_hidden_layers"] = n_layers
    if hasattr(text, "rope_parameters") and isinstance(text.rope_parameters, dict):
        sizes["rope_parameters"] = text.rope_parameters
    if hasattr(text, "is_decoder"):  # BERT-style models generate only as decoders (causal attention)
        sizes["is_decoder"] = True
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(getattr(text, name, None), int):
            sizes[name] = min(getattr(text, name), VOCAB - 1)
    if text is default:
        return config_class(**{k: v for k, v in default.to_dict().items() if k not in sizes} | sizes)
    text_config = type(text)(**{k: v for k, v in text.to_dict().items() if k not in sizes} | sizes)
    return text_config


def tiny_model(model_type: str, seed: int = 0, n_layers: int = 2):
    """A randomly initialised causal LM of `model_type`, eval mode, float32; eos off so lengths are full."""
    import torch

    config = tiny_config(model_type, n_layers)
    with torch.device("meta"):  # count first: a family whose sizes go by other names would stay big
        size = sum(p.numel() for p in tf.AutoModelForCausalLM.from_config(config).parameters())
    if size > MAX_PARAMETERS:
        raise ValueError(f"{model_type} stays at {size:,} parameters once shrunk")
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config)
    model.eval()
    model.generation_config.eos_token_id = None
    return model


class Ids:
    """A tokenizer over space-separated token ids, for models of any vocabulary of at least VOCAB."""

    chat_template = None
    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids):
        return " ".join(str(i) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]


def eager_attentions(model, ids: list[int]) -> list:
    """transformers' own eager attention of one forward pass, one float32 array [H, T, T] a layer that has any."""
    import torch

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    return [a[0].float().numpy() for a in out.attentions if a is not None]
