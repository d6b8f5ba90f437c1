"""How long a step change takes to redraw the attribution grid and the contribution graph, in Chromium through Voilà.

    .venv/bin/python benchmarks/bench_attribution_page.py [steps]

A synthetic trace of SmolLM2's shapes at 2,048 tokens (tests/synthetic.py: 30 layers, 9 query heads, 3 key/value
heads, 64 dims, the last 64 tokens generated; random queries, keys, value norms, lens and attribution, so the
numbers are the machinery's, not a model's) is saved and shown in a notebook: the stepper over one view, the grid or
the graph, sharing one selection, as in the explorer. Measured, `steps` times each (default 8): the right arrow
pressed on the stepper's step slider -> the view has drawn the new step (its data-title names it; the views set it
at the end of their draw). Goals: the grid <= 250 ms, the graph <= 2 s. Prints the range and the goal; not a test.
bench_attribution.py measures the same work in the kernel alone.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import smollm2_shaped_trace, with_analysis, with_attribution
from voila_harness import TRACEBACK, browser, offline_page, voila_server, write_notebook

N_TOKENS, N_GENERATED = 2048, 64
VIEWS = {  # name: (the view's function in explorer.views, its root's CSS class, goal in seconds)
    "attribution grid": ("attribution", "ae-attribution", 0.25),
    "contribution graph": ("contribution", "ae-contribution", 2.0),
}

CELL = """
import explorer, ipywidgets as W
from explorer.views import Selection, stepper, {view}
trace = explorer.load_trace({path!r})
sel = Selection()
display(W.VBox([stepper(trace, sel), {view}(trace, sel)]))
"""

PRESSED = "document.addEventListener('keydown', () => { window.__pressedAt = performance.now(); }, true);"
DRAWN = """([root, step]) => {
  const done = document.querySelector('.' + root)?.dataset.title?.includes(`(step ${step})`);
  if (done) window.__drawnAt = performance.now();
  return done;
}"""


def page_seconds(b, path: Path, folder: Path, view: str, root: str, steps: int) -> list[float]:
    """Seconds from each right arrow on the stepper's slider to `view` drawn at the new step."""
    notebook = write_notebook(folder / f"bench-{view}.ipynb", [CELL.format(path=str(path), view=view)])
    times = []
    with voila_server(notebook) as url:
        page, _ = offline_page(b, viewport=(1300, 1100))
        page.add_init_script(PRESSED)
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector(f".{root}[data-title], {TRACEBACK}", timeout=300_000)
        assert not page.locator(TRACEBACK).count(), page.locator(TRACEBACK).first.inner_text()[-2000:]
        page.wait_for_function(DRAWN, arg=[root, 0], timeout=60_000)
        handle = page.locator(".stepper-view .noUi-handle").first
        for step in range(1, steps + 1):
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(DRAWN, arg=[root, step], timeout=120_000, polling="raf")
            times.append(page.evaluate("(window.__drawnAt - window.__pressedAt) / 1000"))
        page.close()
    return times


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    trace = with_attribution(with_analysis(smollm2_shaped_trace(N_TOKENS), n_generated=N_GENERATED))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, browser() as b:
        path = Path(tmp) / f"synthetic-{N_TOKENS}.trace"
        trace.save(path)
        for name, (view, root, goal) in VIEWS.items():
            rows.append((name, goal, page_seconds(b, path, Path(tmp), view, root, steps)))
    print(f"\n{trace.n_tokens} tokens, {steps} step changes each; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"{'view':<19} | {'page s, min-max':>15} | {'median':>6} | {'goal':>6} | median / goal")
    for name, goal, times in rows:
        ratio = statistics.median(times) / goal
        print(f"{name:<19} | {min(times):>6.3f}-{max(times):<8.3f} | {statistics.median(times):>6.3f} | "
              f"{goal:>6.2f} | {ratio:>5.2f}x {'ok' if ratio <= 1 else 'MISS'}")


if __name__ == "__main__":
    main()
