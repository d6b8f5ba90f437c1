"""What reading today's architectures costs, on the embedded SmolLM2, in one run:

- capture (lens=None) against plain sdpa `generate`, 40 and 1,024 prompt tokens + 64 new, interleaved runs: the
  per-layer positions and the lens's anatomy are probed once per model, so they must not show here;
- the one-off probes themselves (anatomy: one 5-token pass; positions: two 8-token passes);
- kind="no_position" at 2,048 tokens: a new head's rows (the layer un-rotated once, then cached), against "raw".

    .venv/bin/python benchmarks/bench_positions.py [repeats]

Prints ranges and ratios; not a test.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import explorer  # noqa: E402
from explorer.bench import _captured_generate, _plain_generate, _prompt_text, timed  # noqa: E402
from explorer.capture.anatomy import find_anatomy  # noqa: E402
from explorer.capture.positional import probe_positions  # noqa: E402


def main(repeats: int) -> None:
    lm = explorer.load_model(progress=False)
    print(f"bench_positions on {lm.name}, {lm.device}, {torch.get_num_threads()} threads, {repeats} runs each\n")
    anatomy = [timed(lambda: find_anatomy(lm.model)) for _ in range(repeats)]
    positions = [timed(lambda: probe_positions(lm.model)) for _ in range(repeats)]
    print(f"one-off probes: anatomy {min(anatomy) * 1e3:.0f}-{max(anatomy) * 1e3:.0f} ms, positions per layer "
          f"{min(positions) * 1e3:.0f}-{max(positions) * 1e3:.0f} ms")
    lm.anatomy, lm.layer_positions  # noqa: B018 (probed before the timed runs, as a session would have them)

    print("\ncapture (lens=None) vs plain sdpa generate, 64 new tokens, greedy   target <= 1.10x")
    for prompt_tokens in (40, 1024):
        text = _prompt_text(lm, prompt_tokens)
        _plain_generate(lm, text, 4), _captured_generate(lm, text, 4)  # warm-up
        plain, captured = [], []
        for _ in range(repeats):
            plain.append(_plain_generate(lm, text, 64))
            captured.append(_captured_generate(lm, text, 64))
        ratios = [c / p for c, p in zip(captured, plain)]
        print(f"  {prompt_tokens:>5} + 64: plain {min(plain):.2f}-{max(plain):.2f} s, captured {min(captured):.2f}-"
              f"{max(captured):.2f} s, ratio of medians {statistics.median(captured) / statistics.median(plain):.3f}"
              f" (per run {min(ratios):.2f}-{max(ratios):.2f})")

    print("\nkind='no_position' at 2,048 tokens (a read text; rows of one head)   target: redraw <= 250 ms")
    trace = lm.trace(_prompt_text(lm, 2048), progress=False)
    for layer, head in [(3, 0), (3, 1), (12, 4)]:
        raw = timed(lambda: trace.attention(layer, head))
        moved = timed(lambda: trace.attention(layer, head, kind="no_position"))
        print(f"  layer {layer:>2} head {head}: raw {raw * 1e3:.0f} ms, no_position {moved * 1e3:.0f} ms"
              f"{' (un-rotates the layer first)' if head == 0 or layer == 12 else ' (layer cached)'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
