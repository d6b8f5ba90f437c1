"""What the logit attribution costs, on the embedded SmolLM2, in one run:

- default `generate` (lens="steps", which brings the attribution) against the same with the attribution's capture
  switched off, 64 new tokens after 40 and 1,024 prompt tokens, interleaved runs (goal: at most +15 %);
- the attribution tab's work for a new step (the grid, its sum and lists), on a 2,048-token trace (goal: 250 ms);
- the contribution graph tab's for a new step there (goal: 2 s).

    .venv/bin/python benchmarks/bench_attribution.py [repeats]

Prints ranges and ratios; not a test.
"""

from __future__ import annotations

import statistics
import sys
from contextlib import contextmanager

import torch

import explorer
from explorer.bench import _prompt_text, timed
from explorer.capture import language_model
from explorer.capture.attribution import Writers


class _Off(Writers):
    """Writers that keep nothing: the run as it was before the attribution."""

    def __init__(self, model, hidden):
        super().__init__(model, hidden)
        self.problem = "switched off for the benchmark"


@contextmanager
def attribution_off():
    language_model.Writers = _Off
    try:
        yield
    finally:
        language_model.Writers = Writers


def main(repeats: int) -> None:
    lm = explorer.load_model(progress=False)
    print(f"bench_attribution on {lm.name}, {lm.device}, {torch.get_num_threads()} threads, {repeats} runs each\n")
    print("default generate (lens='steps' + attribution) vs without the attribution, 64 new tokens (min-max s)")
    for prompt_tokens in (40, 1024):
        text = _prompt_text(lm, prompt_tokens)

        def run(text=text):
            return lm.generate(text, max_new_tokens=64, min_new_tokens=64, progress=False)

        run()  # warm-up
        with_it, without = [], []
        for _ in range(repeats):
            with_it.append(timed(run))
            with attribution_off():
                without.append(timed(run))
        ratio = statistics.median(with_it) / statistics.median(without)
        print(f"    {prompt_tokens:>5} + 64: {min(without):.2f}-{max(without):.2f} s without, "
              f"{min(with_it):.2f}-{max(with_it):.2f} s with: {ratio - 1:+.1%}   goal <= +15 %")

    from explorer.views import Selection
    from explorer.views.meaning.attribution_view import AttributionView

    trace = lm.generate(_prompt_text(lm, 2048 - 64), max_new_tokens=64, min_new_tokens=64, progress=False,
                        keep_values=True)  # as the dashboard asks: the graph splits by value-weighted attention
    selection = Selection()
    view = AttributionView(trace, selection)
    steps = []
    for step in range(1, min(trace.n_generated, 1 + 10 * repeats)):
        steps.append(timed(lambda step=step: setattr(selection, "step", step)) * 1000)
    print(f"\nattribution tab, a new step at {trace.n_tokens} tokens (the kernel's part, {len(steps)} steps): "
          f"{min(steps):.1f}-{max(steps):.1f} ms, median {statistics.median(steps):.1f} ms   goal <= 250 ms")
    view.close()

    from explorer.views.meaning.contribution_view import ContributionView

    graph_view = ContributionView(trace, selection)
    graphs = [timed(lambda step=step: setattr(selection, "step", step)) for step in range(repeats)]
    print(f"contribution graph tab, a new step at {trace.n_tokens} tokens (the kernel's part, {len(graphs)} steps): "
          f"{min(graphs):.2f}-{max(graphs):.2f} s   goal <= 2 s")
    graph_view.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
