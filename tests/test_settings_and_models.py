"""Bad input gets one clear error naming the problem; models load from the cache, folders and objects."""

import subprocess
import sys

import pytest
import torch

import explorer
from conftest import make_tiny_lm
from explorer import ModelLoadError, SettingsError


@pytest.fixture(scope="module")
def lm():
    return make_tiny_lm("llama")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": None}, "must be a string"),
        ({"prompt": "x" * 200}, "reads at most 128"),  # the tiny models' context is 128 tokens
        ({"max_new_tokens": 0}, "at least 1"),
        ({"max_new_tokens": -3}, "at least 1"),
        ({"max_new_tokens": 2.5}, "whole number"),
        ({"max_new_tokens": True}, "whole number"),
        ({"max_new_tokens": 10_000}, "too many"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
        ({"temperature": 1.0, "top_k": 0}, "top_k"),
        ({"temperature": 1.0, "top_k": -1}, "top_k"),
        ({"top_k": 5}, "only apply when sampling"),
        ({"seed": "abc"}, "seed"),
        ({"candidates": 0}, "candidates"),
        ({"precision": "int4"}, "precision"),
        ({"chat": True}, "no chat template"),
        ({"output_scores": False}, "set by attention-explorer"),
    ],
)
def test_bad_generation_input_is_refused_clearly(lm, kwargs, message):
    kwargs = {"prompt": "ok", "progress": False} | kwargs
    with pytest.raises(SettingsError, match=message):
        lm.generate(**kwargs)


def test_bad_input_does_not_break_the_next_generation(lm):
    with pytest.raises(SettingsError):
        lm.generate("ok", max_new_tokens=0)
    assert lm.generate("ok", max_new_tokens=2, progress=False).n_generated == 2
    assert lm.model.config._attn_implementation == "sdpa"


def test_unknown_model_names_what_was_tried(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="'no-such-org/no-such-model'.*Hugging Face cache.*HF_HUB_OFFLINE"):
        explorer.load_model("no-such-org/no-such-model")
    with pytest.raises(ModelLoadError, match="local folder"):
        explorer.load_model("./no/such/folder/")
    with pytest.raises(SettingsError):
        explorer.load_model("   ")


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    import transformers as tf

    t5 = tf.T5ForConditionalGeneration(tf.T5Config(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                                   vocab_size=50))
    t5.save_pretrained(tmp_path / "t5")
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        explorer.load_model(str(tmp_path / "t5"))
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        explorer.wrap(t5, None)
    bert = tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=50))
    with pytest.raises(ModelLoadError, match="not a causal language model|can generate"):
        explorer.wrap(bert, None)


def test_bad_device_and_dtype():
    with pytest.raises(SettingsError, match="device"):
        explorer.load_model(device="quantum")
    if not torch.cuda.is_available():
        with pytest.raises(SettingsError, match="no CUDA"):
            explorer.load_model(device="cuda")
    with pytest.raises(SettingsError, match="dtype"):
        explorer.load_model(dtype="float8")


def test_local_folder_loads_with_device_and_dtype(tmp_path):
    from explorer.models import resolve_device

    source = make_tiny_lm("gpt2")
    source.model.save_pretrained(tmp_path / "m")
    import transformers as tf

    tok = tf.GPT2TokenizerFast(
        tokenizer_object=__import__("tokenizers").Tokenizer(
            __import__("tokenizers").models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]")
        )
    )
    tok.save_pretrained(tmp_path / "m")
    loaded = explorer.load_model(str(tmp_path / "m"), dtype="bfloat16")
    assert loaded.model.dtype == torch.bfloat16 and loaded.device == resolve_device("auto")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "mps"
                                             if torch.backends.mps.is_available() else "cpu")
    auto = explorer.load_model(str(tmp_path / "m"))
    assert auto.model.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    for name, p in source.model.state_dict().items():
        torch.testing.assert_close(auto.model.state_dict()[name], p)


@pytest.mark.slow
def test_default_model_loads_from_cache_offline_with_chat_template(default_lm):
    info = default_lm.info()
    assert info.name == "SmolLM2-135M-Instruct" and info.layers == 30
    assert info.heads == 9 and info.kv_heads == 3 and info.positional == "rotary"
    assert info.chat_template is True
    trace = default_lm.generate("Say hi", chat=True, max_new_tokens=3, progress=False)
    assert trace.tokens[0] == "<|im_start|>" and "<|im_start|>assistant" in trace.prompt_text


@pytest.mark.slow
def test_default_model_conversion_respects_the_cache_override(tmp_path):
    """A fresh cache directory gets a converted copy whose weights equal the GGUF's, and is reused after."""
    code = """
import sys, time, torch, explorer
from explorer.models import _gguf_path, default_model_dir
from transformers import AutoModelForCausalLM
folder = default_model_dir(progress=False)
assert str(folder).startswith(sys.argv[1]), folder
assert (folder / "model.safetensors").is_file() and (folder / "attention-explorer.json").is_file()
gguf = _gguf_path()
direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
cached = explorer.load_model().model
for name, p in direct.state_dict().items():
    assert torch.equal(cached.state_dict()[name], p), name
mtime = (folder / "model.safetensors").stat().st_mtime
explorer.load_model()
assert (folder / "model.safetensors").stat().st_mtime == mtime  # reused, not converted again
"""
    env = {"ATTENTION_EXPLORER_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], check=True, env=env, timeout=300)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": 0, "do_sample": True}, "do_sample=True"),
        ({"temperature": 0.8, "do_sample": False}, "do_sample=False"),
        ({"do_sample": "yes"}, "do_sample must be True or False"),
    ],
)
def test_extra_keywords_cannot_contradict_the_checked_settings(lm, kwargs, message):
    with pytest.raises(SettingsError, match=message):
        lm.generate("Hi", max_new_tokens=2, progress=False, **kwargs)


def test_extra_do_sample_that_agrees_is_accepted(lm):
    greedy = lm.generate("Hi", max_new_tokens=3, do_sample=False, progress=False)
    again = lm.generate("Hi", max_new_tokens=3, progress=False)
    assert greedy.token_ids == again.token_ids and greedy.settings["temperature"] == 0.0
    sampled = lm.generate("Hi", max_new_tokens=3, temperature=0.8, seed=2, do_sample=True, progress=False)
    assert sampled.settings["temperature"] == 0.8
