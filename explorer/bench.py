"""`attention-explorer bench`: capture overhead, trace memory and load time on the default model, as ratios.

Each figure is measured in one run against the plain way (transformers' sdpa `generate` with no capture),
alternating the two so that a noisy shared machine hurts both alike.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

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


def timed(run) -> float:
    """Seconds `run()` takes."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def _plain_generate(lm, text: str, new_tokens: int) -> float:
    ids = torch.tensor([lm.encode(text)], device=lm.device)
    started = time.perf_counter()
    with torch.inference_mode():
        lm.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
        )
    return time.perf_counter() - started


def _captured_generate(lm, text: str, new_tokens: int, lens: str | None = None, shown: list | None = None) -> float:
    """Seconds of lm.generate; with `shown`, the seconds until the trace was handed over before its lens (what
    the dashboard waits for before it draws the stepper and the heatmap) are appended to it."""
    started = time.perf_counter()
    early = {} if shown is None else {"on_capture": lambda _: shown.append(time.perf_counter() - started)}
    lm.generate(text, max_new_tokens=new_tokens, min_new_tokens=new_tokens, lens=lens, progress=False, **early)
    return time.perf_counter() - started


def lens_cost(lm, prompt_tokens: int, new_tokens: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of plain generate, and of lm.generate with lens=None and lens="steps" (and, of the latter, until
    the trace is shown before its lens), interleaved runs."""
    text = _prompt_text(lm, prompt_tokens)
    _captured_generate(lm, text, 4, "steps")  # warm-up
    out: dict[str, list[float]] = {"plain": [], "no lens": [], "lens steps": [], "first view": []}
    for _ in range(repeats):
        out["plain"].append(_plain_generate(lm, text, new_tokens))
        out["no lens"].append(_captured_generate(lm, text, new_tokens, None))
        out["lens steps"].append(_captured_generate(lm, text, new_tokens, "steps", shown=out["first view"]))
    return out


def print_lens_cost(lm, repeats: int, prompts=(40, 1024)) -> None:
    print(f"(f) logit lens and surprisal: lm.generate lens='steps' (the default) vs lens=None vs plain generate, 64 "
          f"new tokens, {repeats} interleaved runs (min-max s; ratios of medians to plain)")
    print(f"    {'prompt':<8}{'plain':>12}{'lens=None':>12}{'default':>12}{'first view':>12}{'default':>9}"
          f"{'first view':>12}   target: default <= 1.25x")
    for prompt_tokens in prompts:
        t = lens_cost(lm, prompt_tokens, 64, repeats)
        span = {k: f"{min(v):.2f}-{max(v):.2f}" for k, v in t.items()}
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"    {prompt_tokens:<8}{span['plain']:>12}{span['no lens']:>12}{span['lens steps']:>12}"
              f"{span['first view']:>12}{med['lens steps'] / med['plain']:>8.2f}x{med['first view'] / med['plain']:>11.2f}x")
    print("    first view: until generate hands the trace over before its lens (on_capture), when the dashboard draws "
          "the stepper and heatmap")


def analysed_trace_size(lm, n_tokens: int, new_tokens: int = 64):
    """A trace of n_tokens (prompt + new_tokens generated) with the steps' lens and value norms."""
    text = _prompt_text(lm, n_tokens - new_tokens)
    return lm.generate(text, max_new_tokens=new_tokens, min_new_tokens=new_tokens, lens="steps", progress=False)


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


# eight prompts of different lengths, as a class or a researcher's list would have them
_PROMPTS = [
    "The capital of France is",
    "Two plus two is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "The best way to learn a new language is",
    "Photosynthesis is the process by which plants",
    "In 1969, the first people to walk on the moon were",
    "A haiku about autumn leaves:",
    "The three primary colours are red, blue and",
]


def _plain_batch(lm, prompts: list[str], new_tokens: int) -> float:
    """Seconds of plain transformers generate over `prompts` as one left-padded batch."""
    tokenizer = lm.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(lm.device)
    finally:
        tokenizer.padding_side = side
    started = time.perf_counter()
    with torch.inference_mode():
        lm.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=tokenizer.pad_token_id)
    return time.perf_counter() - started


def batching(lm, repeats: int, new_tokens: int = 20, cpu: dict[str, list[float]] | None = None
             ) -> dict[str, list[float]]:
    """Seconds for the 8 prompts: plain one by one, plain as one batch, captured one by one and as one batch
    (lens=None and the default lens), interleaved runs. With `cpu`, the process's CPU seconds of each run go there
    too (steadier than the clock when other work shares the cores)."""
    prompts = _PROMPTS
    lm.generate(prompts[:2], max_new_tokens=2, progress=False)  # warm-up

    def captured(lens, batch_size):
        started = time.perf_counter()
        lm.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, lens=lens, batch_size=batch_size,
                    progress=False)
        return time.perf_counter() - started

    runs = {"plain one by one": lambda: sum(_plain_generate(lm, p, new_tokens) for p in prompts),
            "plain batch": lambda: _plain_batch(lm, prompts, new_tokens),
            "captured one by one": lambda: captured(None, 1),
            "captured batch": lambda: captured(None, 8),
            "captured batch, lens": lambda: captured("steps", 8)}
    out: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            on_cpu = time.process_time()
            out[name].append(run())
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - on_cpu)
    return out


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


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_above(run) -> tuple[float, object]:
    """MB that the process's peak resident memory rose above its size just before `run()` (Linux: the high-water
    mark is reset first through /proc/self/clear_refs, so the model load's own peak does not hide it)."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kb("VmRSS")
    result = run()
    return (_rss_kb("VmHWM") - before) / 1024, result


def _peak_of(kind: str, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """In this (fresh) process: load the model, warm the way up once on a short prompt, then measure one run."""
    lm = load_model(progress=False)

    def run(text: str, n: int):
        ids = torch.tensor([lm.encode(text)], device=lm.device)
        settings = dict(attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                        pad_token_id=lm.tokenizer.pad_token_id)
        if kind == "capture":
            return lm.generate(text, max_new_tokens=n, min_new_tokens=n, progress=False)
        with torch.inference_mode():
            return lm.model.generate(ids, output_attentions=kind == "eager", return_dict_in_generate=True, **settings)

    if kind == "eager":
        lm.model.set_attn_implementation("eager")
    run(_prompt_text(lm, 16), 2)  # thread pools, kernels and caches of the first call are not the run's
    text = _prompt_text(lm, prompt_tokens)
    peak, result = peak_above(lambda: run(text, new_tokens))
    return {"peak": peak, "trace": result.nbytes / 2**20 if kind == "capture" else 0.0}


def peak_memory(prompt_tokens: int = 1024, new_tokens: int = 32, repeats: int = 3) -> dict[str, list[dict]]:
    """Peak MB above the loaded model, each run in a fresh process (a process keeps what it freed, so a second run
    in it would look free): plain sdpa generate, our capture (keeping its trace), and transformers' eager
    generate(output_attentions=True), the way the other tools capture; `repeats` runs of each, interleaved."""
    import json
    import subprocess
    import sys

    out: dict[str, list[dict]] = {"plain": [], "capture": [], "eager": []}
    for _ in range(repeats):
        for kind in out:
            done = subprocess.run([sys.executable, "-m", "explorer.bench", "peak", kind, str(prompt_tokens),
                                   str(new_tokens)], capture_output=True, text=True, check=True)
            out[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


def threads(lm, repeats: int = 3, new_tokens: int = 20) -> dict[tuple[str, int], list[float]]:
    """Seconds of a dashboard-sized generation (20 new tokens, values kept) with 1 torch thread and with torch's
    default, on an idle machine and beside two processes that keep two cores busy (as viewer kernels and
    browsers do on a class server)."""
    import subprocess
    import sys

    default = torch.get_num_threads()
    text = "Tell me about the sea and the"
    out: dict[tuple[str, int], list[float]] = {}

    def measure(load: str) -> None:
        for _ in range(repeats):
            for n in sorted({1, default}):
                torch.set_num_threads(n)
                started = time.perf_counter()
                lm.generate(text, max_new_tokens=new_tokens, min_new_tokens=new_tokens, keep_values=True,
                            progress=False)
                out.setdefault((load, n), []).append(time.perf_counter() - started)

    try:
        measure("idle")
        spin = "import time\nend = time.time() + 120\nwhile time.time() < end: pass"
        busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
        try:
            measure("busy")
        finally:
            for p in busy:
                p.kill()
                p.wait()
    finally:
        torch.set_num_threads(default)
    return out


def run_benchmark(repeats: int = 3) -> None:
    started = time.perf_counter()
    lm = load_model(progress=True)
    load_seconds = time.perf_counter() - started
    print(f"attention-explorer bench on {lm.name}, {lm.device}, {lm.model.dtype}, {torch.get_num_threads()} threads\n")

    print("(a) capture overhead: lm.generate with capture (lens=None) vs plain sdpa model.generate, greedy, median "
          f"of {repeats}")
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

    trace = analysed_trace_size(lm, 2048)
    lens_mb = trace.lens.nbytes / 1e6
    print(f"    {trace.n_tokens:<8}{trace.nbytes / 1e6:>10.1f} MB with lens='steps' ({lens_mb:.1f} MB) and value norms "
          f"({trace.value_norms.nbytes / 1e6:.1f} MB), {trace.settings['precision']}   target <= 110 MB")

    print("\n(c) peak memory above the loaded model, 1,024-token prompt + 32 new (VmHWM, reset before each)")
    peaks = peak_memory()
    plain, capture, eager = (statistics.median(r["peak"] for r in peaks[k]) for k in ("plain", "capture", "eager"))
    trace = peaks["capture"][0]["trace"]
    floor = plain + trace

    def spread(kind: str) -> str:
        values = [r["peak"] for r in peaks[kind]]
        return f"{min(values):.0f}-{max(values):.0f}"

    print(f"    plain sdpa generate      {plain:>7.0f} MB  ({spread('plain')} over {len(peaks['plain'])} runs)")
    print(f"    capture                  {capture:>7.0f} MB  ({spread('capture')}), keeping a {trace:.0f} MB trace: "
          f"{capture / floor:.2f}x the floor (plain + trace = {floor:.0f} MB)   target <= 1.15x")
    print(f"    eager output_attentions  {eager:>7.0f} MB  ({spread('eager')}), {eager / capture:.1f}x ours")

    print("\n(d) torch threads for the dashboard's generation (20 new tokens), idle and beside 2 busy processes")
    timed = threads(lm)
    default = max(n for _, n in timed)
    for load in ("idle", "busy"):
        one, many = statistics.median(timed[(load, 1)]), statistics.median(timed[(load, default)])
        print(f"    {load:<5} 1 thread {one:.2f} s, {default} threads {many:.2f} s: 1 thread takes {one / many:.2f}x")
    print("    the generation service uses half the cores (--threads N overrides; torch.set_num_threads in Python)")

    print("\n(e) load time of model + tokenizer")
    again = time.perf_counter()
    load_model(progress=False)
    print(f"    first load in this process (converts the GGUF first if there is no cache): {load_seconds:.2f} s")
    print(f"    load from cache: {time.perf_counter() - again:.2f} s   target <= 3 s")

    print()
    print_lens_cost(lm, repeats)

    print(f"\n(g) batches: the {len(_PROMPTS)} prompts above x 20 new tokens, greedy, {repeats} interleaved runs "
          f"(min-max s)")
    t = batching(lm, repeats)
    for name, values in t.items():
        print(f"    {name:<24}{min(values):>6.2f}-{max(values):.2f}")
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"    captured batch vs captured one by one: {med['captured one by one'] / med['captured batch']:.2f}x "
          f"the throughput   target >= 3.5x")
    print(f"    capture overhead at batch 8 (lens=None) vs plain batch: {med['captured batch'] / med['plain batch']:.3f}x"
          f"   target <= 1.10x; with the default lens {med['captured batch, lens'] / med['plain batch']:.3f}x")

    print(f"\nbench took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__" and sys.argv[1:2] == ["batching"]:  # python -m explorer.bench batching [RUNS]: (g) alone
    _lm = load_model(progress=False)
    _cpu: dict[str, list[float]] = {}
    _wall = batching(_lm, int(sys.argv[2]) if len(sys.argv) > 2 else 3, cpu=_cpu)
    print(f"{'':<24}{'wall s':>12}{'CPU s':>12}   ({torch.get_num_threads()} torch threads; load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])})")
    for _name, _values in _wall.items():
        print(f"{_name:<24}{min(_values):>6.2f}-{max(_values):.2f}{min(_cpu[_name]):>7.2f}-{max(_cpu[_name]):.2f}")
    _ratio = {k: statistics.median(v["captured batch"]) / statistics.median(v["plain batch"])
              for k, v in (("wall", _wall), ("CPU", _cpu))}
    print(f"capture (lens=None) at batch 8 vs plain batch: {_ratio['wall']:.2f}x wall, {_ratio['CPU']:.2f}x CPU "
          f"(medians)   target <= 1.10x")
elif __name__ == "__main__" and sys.argv[1:2] == ["lens"]:  # python -m explorer.bench lens: (f) alone
    print_lens_cost(load_model(progress=False), 5)
elif __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "peak" and sys.argv[3].isdigit() \
        and sys.argv[4].isdigit():  # python -m explorer.bench peak KIND PROMPT_TOKENS NEW_TOKENS: one, as JSON
    import json

    _, _, kind, prompt_tokens, new_tokens = sys.argv
    print(json.dumps(_peak_of(kind, int(prompt_tokens), int(new_tokens))))
elif __name__ == "__main__":
    sys.exit("usage: python -m explorer.bench lens | batching [RUNS] | peak KIND PROMPT_TOKENS NEW_TOKENS\n"
             "(all of them, with their targets: attention-explorer bench, or make bench)")
