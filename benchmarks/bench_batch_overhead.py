"""Capture overhead at batch 8 (issue 16): lm.generate over the bench's 8 prompts x 20 new tokens (lens=None unless
given) against plain batched transformers generate, interleaved runs on one torch thread, in CPU seconds and on the
clock (CPU seconds stay steady while other work shares the cores; the clock does not).

    .venv/bin/python benchmarks/bench_batch_overhead.py [RUNS] [LENS]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

from explorer import load_model
from explorer.bench import _PROMPTS


def main(runs: int = 6, lens: str | None = None) -> None:
    torch.set_num_threads(1)
    lm = load_model(progress=False)
    tokenizer = lm.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    inputs = tokenizer(_PROMPTS, return_tensors="pt", padding=True).to(lm.device)
    tokenizer.padding_side = side

    def plain():
        with torch.inference_mode():
            lm.model.generate(**inputs, max_new_tokens=20, min_new_tokens=20, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id)

    def ours():
        lm.generate(_PROMPTS, max_new_tokens=20, min_new_tokens=20, lens=lens, batch_size=8, progress=False)

    def measured(run) -> tuple[float, float]:
        clock, cpu = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - clock, time.process_time() - cpu

    ours(), plain()  # warm-up
    pairs = [(measured(plain), measured(ours)) for _ in range(runs)]
    print(f"8 prompts x 20 new tokens, lens={lens!r}, 1 torch thread, {runs} interleaved runs "
          f"(load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])})")
    for i, name in ((1, "CPU s"), (0, "wall s")):
        p, c = [a[i] for a, _ in pairs], [b[i] for _, b in pairs]
        ratios = [y / x for x, y in zip(p, c)]
        print(f"  {name:<7} plain {min(p):.2f}-{max(p):.2f}  capture {min(c):.2f}-{max(c):.2f}  "
              f"{statistics.median(c) / statistics.median(p):.2f}x (medians; pairs {min(ratios):.2f}-{max(ratios):.2f}x)"
              f"   target <= 1.10x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6, sys.argv[2] if len(sys.argv) > 2 else None)
