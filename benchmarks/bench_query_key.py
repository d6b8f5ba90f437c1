"""How long a new head takes in the queries-and-keys view: measured in the kernel and in Chromium through Voilà.

    .venv/bin/python benchmarks/bench_query_key.py [512 2048]

For each size a synthetic trace of SmolLM2's shapes (tests/synthetic.py: 30 layers, 9 query heads, 3 key/value
heads, 64 dims; random queries and keys, so the numbers are the machinery's, not a model's) is saved and shown in a
notebook. Measured:
- kernel: Trace.query_key_map (align and PCA) and the figure built and turned to JSON, for a head not seen before;
- page: a new head picked in the head picker -> plotly has drawn its 2 × T points (its title names the new head).
Goal: <= 2 s for a new head at 2,048 tokens. Prints a table with the ratio to the goal; not a test.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import smollm2_shaped_trace
from voila_harness import browser, offline_page, voila_server, write_notebook

from explorer.views.meaning.query_key_view import query_key_figure

GOAL_S = 2.0
HEADS = 6  # new heads picked in the page, one after another

CELL = """
import explorer
from explorer.views import query_key
query_key(explorer.load_trace({path!r}), layer=3, head=0)
"""

CHANGED = "document.addEventListener('change', () => { window.__pickedAt = performance.now(); }, true);"
DRAWN = """([head, n]) => {
  const gd = document.querySelector('.query-key-view .js-plotly-plot');
  const done = gd?._fullLayout?.title?.text?.startsWith(`layer 3, head ${head}:`)
    && gd._fullData.every(d => d._length === n);
  if (done) window.__drawnAt = performance.now();
  return done;
}"""


def kernel_seconds(trace) -> list[float]:
    """Per head of layer 5 (never seen before): seconds to compute its map and build its figure's JSON."""
    times = []
    for head in range(trace.n_heads):
        started = time.perf_counter()
        query_key_figure(trace, 5, head).to_json()
        times.append(time.perf_counter() - started)
    return times


def page_seconds(b, path: Path, folder: Path, n_tokens: int) -> list[float]:
    notebook = write_notebook(folder / f"bench-qk-{n_tokens}.ipynb", [CELL.format(path=str(path))])
    times = []
    with voila_server(notebook) as url:
        page, _ = offline_page(b, viewport=(1300, 1100))
        page.add_init_script(CHANGED)
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_function(DRAWN, arg=[0, n_tokens], timeout=300_000)
        for head in range(1, HEADS + 1):
            page.locator(".qk-head select").select_option(str(head))
            page.wait_for_function(DRAWN, arg=[head, n_tokens], timeout=120_000, polling="raf")
            times.append(page.evaluate("(window.__drawnAt - window.__pickedAt) / 1000"))
        page.close()
    return times


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [512, 2048]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, browser() as b:
        for n in sizes:
            trace = smollm2_shaped_trace(n)
            path = Path(tmp) / f"synthetic-{n}.trace"
            trace.save(path)
            kernel = kernel_seconds(trace)
            rows.append((n, kernel, page_seconds(b, path, Path(tmp), n)))
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'tokens':>6} | {'kernel s, median (max)':>22} | {'page s, median (max)':>20} | {'page / goal':>11}")
    for n, kernel, page in rows:
        ratio = statistics.median(page) / GOAL_S
        print(f"{n:>6} | {statistics.median(kernel):>14.3f} ({max(kernel):.3f}) | {statistics.median(page):>12.3f} "
              f"({max(page):.3f}) | {ratio:>10.2f}x {'ok' if ratio <= 1 else 'MISS'}")


if __name__ == "__main__":
    main()
