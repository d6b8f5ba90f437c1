"""How many waiting requests the generation service should put into one `lm.generate([...])` call: throughput and
time of a batch of B class requests on SmolLM2, B = 1, 2, 4, 8, 16, with the service's own settings (the class
default of 20 new tokens, greedy, no chat template, lens "steps", values kept, the service's torch threads).

    .venv/bin/python benchmarks/bench_service_batch.py [REPEATS]

The sizes are run interleaved REPEATS times (default 3); each line gives the median and range of a batch's time,
requests a second, and the speed-up over serving the same requests one by one (B = 1).
"""

from __future__ import annotations

import os
import random
import statistics
import string
import sys
import time

import torch

from explorer import load_model
from explorer.service.server import default_threads

SIZES = (1, 2, 4, 8, 16)


def prompts(n: int, seed: int = 0) -> list[str]:
    """The prompts of benchmarks/bench_class.py: one a student, each with a word of its own."""
    rng = random.Random(seed)
    codes = ["".join(string.ascii_lowercase[k // 26**j % 26] for j in range(6)) for k in rng.sample(range(26**6), n)]
    return [f"Note of Student-{i:03d} ({code}): the number {i} plus the number {i} makes"
            for i, code in enumerate(codes, 1)]


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    torch.set_num_threads(default_threads())
    lm = load_model(progress=False)
    texts = prompts(max(SIZES))
    lm.generate(texts[0], 20, keep_values=True, progress=False)  # warm up
    print(f"batch sizes on {lm.name}, {torch.get_num_threads()} torch thread(s), load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    times: dict[int, list[float]] = {b: [] for b in SIZES}
    for _ in range(repeats):
        for b in SIZES:
            started = time.perf_counter()
            traces = lm.generate(texts[:b], 20, keep_values=True, progress=False, batch_size=b)
            for trace in traces:
                trace.to_bytes()  # the service sends each as a trace file
            times[b].append(time.perf_counter() - started)
    one = statistics.median(times[1])
    print(f"{'B':>3}  {'batch time (s)':>22}  {'requests/s':>10}  {'vs one by one':>13}")
    for b in SIZES:
        median = statistics.median(times[b])
        print(f"{b:>3}  {median:>8.2f} ({min(times[b]):.2f}–{max(times[b]):.2f})  {b / median:>10.2f}  "
              f"{b * one / median:>12.2f}×")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
