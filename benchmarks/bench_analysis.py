"""Head scores, attention rollout and the heads map's thumbnails of a 2,048-token SmolLM2-shaped trace: seconds
each (the heads map's head-by-head loop stays: a layer's heads in one batched product measured 5.9-6.6 s against
5.7 s, its [heads, rows, T] blocks falling out of the cache).

    .venv/bin/python benchmarks/bench_analysis.py [TOKENS]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from synthetic import smollm2_shaped_trace  # noqa: E402

from explorer.views.attention import attention_data as ad  # noqa: E402


def seconds(run, repeats: int = 3) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        out.append(time.perf_counter() - started)
    return out


def main() -> None:
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
    trace = smollm2_shaped_trace(tokens, sink=4.0, seed=0)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; a {tokens}-token trace, "
          f"{trace.n_layers} layers x {trace.n_heads} heads; 3 runs each (min-max, median)")
    for name, run, target in [
        ("head scores (trace.head_scores)", trace.head_scores, "<= 10 s"),
        ("attention rollout (trace.attention_flow)", trace.attention_flow, "<= 10 s"),
        ("heads map thumbnails + stats (views.heads_map)", lambda: ad.thumbnails_and_stats(trace), ""),
    ]:
        t = seconds(run)
        print(f"  {name:<56} {min(t):6.2f}-{max(t):6.2f} s, median {statistics.median(t):6.2f}   {target}")


if __name__ == "__main__":
    main()
