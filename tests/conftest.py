"""Shared fixtures: tiny randomly initialised models of each architecture, and the real default model."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network


def tiny_config(arch: str):
    """A small random config of one architecture family (seeded weights come from the model fixture)."""
    import transformers as tf

    common = dict(vocab_size=96, max_position_embeddings=128)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, vocab_size=96, bos_token_id=1, eos_token_id=0)
    if arch == "gpt_neox":  # partial rotary
        return tf.GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            rotary_pct=0.25, rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
            **common,
        )
    if arch == "llama":  # grouped-query attention
        return tf.LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, **common,
        )
    if arch == "qwen2":
        return tf.Qwen2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, **common,
        )
    if arch == "gpt_neo":  # outside the attention interface: hooks
        return tf.GPTNeoConfig(
            hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
            window_size=8, max_position_embeddings=128, vocab_size=96, bos_token_id=1, eos_token_id=0,
        )
    if arch == "mistral":  # sliding-window attention (window 4, shorter than the test texts)
        return tf.MistralConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, sliding_window=4, **common,
        )
    if arch == "gemma2":  # attention logit soft-capping, alternating sliding and global layers, eager by default
        return tf.Gemma2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            intermediate_size=64, sliding_window=4, attn_logit_softcapping=5.0, final_logit_softcapping=None,
            **common,
        )
    raise ValueError(arch)


ARCHITECTURES = ["gpt2", "gpt_neox", "llama", "qwen2", "gpt_neo", "mistral", "gemma2"]


class ByteTokenizer:
    """A minimal stand-in tokenizer for tiny random models: one token per byte, offset by 2 (0 = eos, 1 = bos)."""

    chat_template = None
    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1] * bool(add_special_tokens) + [b % 94 + 2 for b in text.encode()]}

    def decode(self, ids):
        return "".join("<eos>" if i == 0 else "<bos>" if i == 1 else chr(32 + (i - 2) % 94) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [self.decode([i]) for i in ids]


def named_blocks(model):
    """The decoder blocks of one of ARCHITECTURES, by the names each family gives them (the test's own reference,
    independent of how capture finds them)."""
    base = getattr(model, "transformer", None) or getattr(model, "gpt_neox", None) or model.model
    return base.h if hasattr(base, "h") else base.layers


def named_final_norm(model):
    """The final norm of one of ARCHITECTURES, by name."""
    base = getattr(model, "transformer", None) or getattr(model, "gpt_neox", None) or model.model
    for name in ("ln_f", "final_layer_norm", "norm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise AssertionError(f"no final norm named in {type(model).__name__}")


def run_without_torch(trace, tmp_path, code: str) -> None:
    """Save `trace`, then in a fresh Python load it as `trace`, run `code`, and fail if torch or transformers
    was imported on the way: the view side must work with no model."""
    import subprocess
    import sys

    path = tmp_path / "no-torch.trace"
    trace.save(path)
    script = (
        f"import sys, explorer\ntrace = explorer.load_trace({str(path)!r})\n{code}\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\nassert not bad, f'imported {bad}'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)


def make_tiny_lm(arch: str, seed: int = 0):
    import torch
    import transformers as tf

    import explorer

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(arch))
    model.generation_config.eos_token_id = None  # random models would stop at random; tests want full lengths
    return explorer.wrap(model, ByteTokenizer(), name=f"tiny-{arch}")


@pytest.fixture(scope="session")
def tiny_trace():
    """A small generated trace (tiny Llama with GQA): 13 prompt tokens (<bos> + 12 bytes) + 10 generated."""
    lm = make_tiny_lm("llama")
    return lm.generate("Hello, world", max_new_tokens=10, temperature=0.8, seed=3, progress=False)


@pytest.fixture(scope="session")
def default_lm():
    """The embedded SmolLM2-135M-Instruct (converted once into the user's cache)."""
    import explorer

    return explorer.load_model(progress=False)


@pytest.fixture(scope="session")
def default_trace(default_lm):
    return default_lm.generate("The capital of France is", max_new_tokens=12, progress=False)
