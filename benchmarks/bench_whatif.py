"""What-if on SmolLM2: a branch at step k of a 64-token greedy generation against regenerating the remaining
tokens, and switching heads off against the time a user waits to see the next token's new probabilities.

    .venv/bin/python benchmarks/bench_whatif.py [REPEATS]

Each figure is the min-max over REPEATS interleaved runs (default 3), with the ratio of the medians.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from explorer import load_model
from explorer.whatif import rescore


def seconds(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f} s"


def plain_generate(lm, ids: list[int], n: int) -> None:
    """What regenerating the remaining tokens costs without us: transformers' generate on the prefix."""
    x = torch.tensor([ids])
    with torch.inference_mode():
        lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    lm = load_model(progress=False)
    print(f"what-if bench on {lm.name}, {torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    prompt = "Write a short story about a robot who learns to paint. Once upon a time"
    trace = lm.generate(prompt, max_new_tokens=64, min_new_tokens=64, progress=False)
    print(f"\n(a) a branch at step k of a 64-token greedy generation ({trace.n_prompt}-token prompt), forcing the "
          f"runner-up,\n    against transformers' generate of the remaining 64-k tokens from the same prefix")
    print("    'captured' regenerates the same tokens with lm.generate_from_ids (capture, lens and surprisal as the "
          "branch has them)")
    print(f"    {'k':>4}{'lm.branch':>16}{'captured':>16}{'plain':>16}{'/captured':>11}{'/plain':>8}   target <= 1")
    for k in (8, 32, 56):
        step = trace.steps[k]
        prefix = trace.token_ids[: step.position] + [step.top_k[1].token_id]
        ours, captured, plain = [], [], []
        for _ in range(repeats):
            ours.append(seconds(lambda: lm.branch(trace, k, step.top_k[1], progress=False)))
            captured.append(seconds(lambda: lm.generate_from_ids(prefix, 64 - k - 1, progress=False)))
            plain.append(seconds(lambda: plain_generate(lm, prefix, 64 - k - 1)))
        ratio = statistics.median(ours) / statistics.median(captured)
        print(f"    {k:>4}{span(ours):>16}{span(captured):>16}{span(plain):>16}{ratio:>11.2f}"
              f"{statistics.median(ours) / statistics.median(plain):>8.2f}")

    step = trace.steps[32]
    prefix = trace.token_ids[: step.position] + [step.top_k[1].token_id]
    prefill = [seconds(lambda: plain_generate(lm, prefix, 1)) for _ in range(repeats)]
    print(f"    reading the {len(prefix)}-token prefix (+1 token), what reusing the parent's KV cache could save at "
          f"k = 32: {span(prefill)}")

    short = lm.generate("The quick brown fox jumps over the lazy dog because it wanted to reach the river before "
                        "the sun went down, and the dog", max_new_tokens=4, progress=False)
    print(f"\n(b) a head switched off: the step's next-token probabilities again (whatif.rescore), "
          f"{short.steps[0].position}-token prompt")
    times = [seconds(lambda: rescore(lm, short, 0, [(5, 2)])) for _ in range(repeats + 2)]
    print(f"    rescore with 1 head off: {span(times)} over {len(times)} runs   target <= 1 s")
    times = [seconds(lambda: rescore(lm, short, 0, [(layer, h) for layer in range(10) for h in range(9)]))
             for _ in range(repeats)]
    print(f"    rescore with 90 heads off: {span(times)}")


if __name__ == "__main__":
    main()
