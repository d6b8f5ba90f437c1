"""`attention-explorer bench`: capture overhead, trace memory and load time on the default model, as ratios.

Each figure is measured in one run against the plain way (transformers' sdpa `generate` with no capture),
alternating the two so that a noisy shared machine hurts both alike.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from .models import load_model

# a plain English paragraph, repeated to make long prompts of a chosen token count
_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening to light the lamp, counting the steps as "
    "his father had taught him, while the sea below kept its own slow count against the rocks. "
)


def _prompt_ids(lm, n_tokens: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += lm.tokenizer(_TEXT, add_special_tokens=False)["input_ids"]
    return ids[:n_tokens]


def _prompt_text(lm, n_tokens: int) -> str:
    """A text that encodes to exactly n_tokens tokens with this tokenizer (decoding can merge a few)."""
    ids = _prompt_ids(lm, 2 * n_tokens)
    k = n_tokens
    for _ in range(64):
        text = lm.tokenizer.decode(ids[:k])
        have = len(lm.encode(text))
        if have == n_tokens:
            break
        k += n_tokens - have
    return text


def _plain_generate(lm, text: str, new_tokens: int) -> float:
    ids = torch.tensor([lm.encode(text)], device=lm.device)
    started = time.perf_counter()
    with torch.inference_mode():
        lm.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
        )
    return time.perf_counter() - started


def _captured_generate(lm, text: str, new_tokens: int) -> float:
    started = time.perf_counter()
    lm.generate(text, max_new_tokens=new_tokens, min_new_tokens=new_tokens, progress=False)
    return time.perf_counter() - started


def overhead(lm, prompt_tokens: int, new_tokens: int, repeats: int) -> tuple[float, float, float]:
    """Median seconds of plain and captured generation, and their ratio."""
    text = _prompt_text(lm, prompt_tokens)
    _plain_generate(lm, text, 4), _captured_generate(lm, text, 4)  # warm-up
    plain, captured = [], []
    for _ in range(repeats):
        plain.append(_plain_generate(lm, text, new_tokens))
        captured.append(_captured_generate(lm, text, new_tokens))
    p, c = statistics.median(plain), statistics.median(captured)
    return p, c, c / p


def memory(lm, n_tokens: int) -> tuple[int, int, float, str, int]:
    """Bytes a trace of n_tokens holds, bytes of full float32 attention, the float16-storage error against
    float32 (nan when stored as float32), the precision used and the trace's token count."""
    text = _prompt_text(lm, n_tokens)
    trace = lm.trace(text)
    config = lm.model.config
    full = config.num_hidden_layers * config.num_attention_heads * trace.n_tokens**2 * 4
    exact = lm.trace(text, precision="float32") if trace.settings["precision"] != "float32" else None
    error = float("nan")
    if exact is not None:
        error = max(
            float(np.abs(trace.attention(layer, 0) - exact.attention(layer, 0)).max())
            for layer in range(0, trace.n_layers, 5)
        )
    return trace.nbytes, full, error, trace.settings["precision"], trace.n_tokens


def run_benchmark(repeats: int = 3) -> None:
    started = time.perf_counter()
    lm = load_model(progress=True)
    load_seconds = time.perf_counter() - started
    print(f"attention-explorer bench on {lm.name}, {lm.device}, {lm.model.dtype}, {torch.get_num_threads()} threads\n")

    print("(a) capture overhead: lm.generate with capture vs plain sdpa model.generate, greedy, median of "
          f"{repeats}")
    print(f"    {'prompt + new':<16}{'plain s':>10}{'captured s':>12}{'ratio':>8}   target <= 1.10")
    for prompt_tokens in (40, 1024):
        p, c, ratio = overhead(lm, prompt_tokens, 64, repeats)
        print(f"    {f'{prompt_tokens} + 64':<16}{p:>10.2f}{c:>12.2f}{ratio:>8.3f}")

    print("\n(b) memory a trace holds vs full float32 attention (layers x heads x T^2 x 4 bytes)")
    print(f"    {'tokens':<8}{'trace MB':>10}{'full MB':>10}{'ratio':>9}  {'stored as':<9}  "
          f"max |w16 - w32|   target <= 100 MB at 2,048")
    for n in (512, 2048):
        held, full, error, precision, n_tokens = memory(lm, n)
        err = "-" if error != error else f"{error:.1e}"
        print(f"    {n_tokens:<8}{held / 1e6:>10.1f}{full / 1e6:>10.0f}{full / held:>8.0f}x  {precision:<9}  {err}")

    print("\n(c) load time of model + tokenizer")
    again = time.perf_counter()
    load_model(progress=False)
    print(f"    first load in this process (converts the GGUF first if there is no cache): {load_seconds:.2f} s")
    print(f"    load from cache: {time.perf_counter() - again:.2f} s   target <= 3 s")
    print(f"\nbench took {time.perf_counter() - started:.0f} s")
