"""How fast the heatmap answers in a browser: key press -> redraw, measured in Chromium through Voilà, offline.

    .venv/bin/python benchmarks/bench_views.py [512 2048] [--kind no_position|position_effect]

For each size a synthetic trace of SmolLM2's shapes (tests/synthetic.py: 30 layers, 9 query heads, 3 key/value
heads, 64 dims; random queries and keys, so the numbers are the machinery's, not a model's) is saved and shown in a
notebook. Measured:
- head step: ArrowDown on the head picker -> the new head drawn (Python recomputes the overview and the window);
- window step: ArrowRight on the window slider -> the moved window drawn (only the window is recomputed);
- bytes: websocket bytes received for one step, against T² (one byte a weight of the full head).
--kind draws that kind (the synthetic trace then has SmolLM2's rotary tables, so position can be taken out).
Also, in this process: the heads map's build time (every head read once, in chunks of rows).
Targets: head step <= 100 ms at 512 tokens, <= 250 ms at 2,048; bytes <= T². Prints a table; not a test.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import smollm2_shaped_trace  # noqa: E402
from voila_harness import browser, offline_page, voila_server, write_notebook  # noqa: E402

TARGET_MS = {512: 100, 2048: 250}
STEPS = 8

CELL = """
import explorer
from explorer.views.attention.heatmap_view import heatmap
trace = explorer.load_trace({path!r})
heatmap(trace, layer=3, head=0, window_size=64, kind={kind!r})
"""

KEY_TIME = "document.addEventListener('keydown', () => { window.__keyAt = performance.now(); }, true);"


def measure(page, frames, control: str, key: str, ready: str) -> tuple[list[float], list[int]]:
    """Press `key` on `control` STEPS times; per step: ms from key press to redraw, websocket bytes received."""
    page.locator(control).focus()
    times, sizes = [], []
    for _ in range(STEPS):
        count = int(page.locator(".ae-heatmap").get_attribute("data-draw-count"))
        start = len(frames)
        page.keyboard.press(key)
        page.wait_for_function(f"(d => +d.drawCount > {count} && {ready})(document.querySelector('.ae-heatmap').dataset)",
                               timeout=60_000)
        times.append(page.evaluate("+document.querySelector('.ae-heatmap').dataset.drawnAt - window.__keyAt"))
        page.wait_for_timeout(80)  # let trailing frames land before counting
        sizes.append(sum(frames[start:]))
    return times, sizes


def run(n_tokens: int, b, folder: Path, kind: str = "raw") -> dict:
    trace = smollm2_shaped_trace(n_tokens, rotary=kind != "raw")
    path = folder / f"synthetic-{n_tokens}.trace"
    trace.save(path)
    from explorer.views.attention.heads_map_view import heads_map

    started = time.perf_counter()
    hmap = heads_map(trace)
    heads_map_s = time.perf_counter() - started
    notebook = write_notebook(folder / f"bench-{n_tokens}.ipynb", [CELL.format(path=str(path), kind=kind)])
    with voila_server(notebook) as url:
        page, log = offline_page(b, viewport=(1300, 1100))
        frames: list[int] = []
        page.on("websocket", lambda ws: ws.on("framereceived", lambda p: frames.append(len(p))))
        page.add_init_script(KEY_TIME)
        page.goto(url + "/", wait_until="domcontentloaded")
        page.wait_for_selector(".ae-heatmap[data-draw-count]", timeout=300_000)
        head_ms, head_bytes = measure(page, frames, ".ae-head", "ArrowDown", "true")
        window_ms, window_bytes = measure(page, frames, ".ae-slider", "ArrowRight", "true")
        page.close()
    return {
        "T": n_tokens, "head_ms": statistics.median(head_ms), "head_max": max(head_ms),
        "head_bytes": int(statistics.median(head_bytes)), "window_ms": statistics.median(window_ms),
        "window_bytes": int(statistics.median(window_bytes)), "heads_map_s": heads_map_s,
        "thumb_bytes": len(hmap.thumbs), "errors": log.page_errors + log.our_console_errors() + log.our_blocked(),
    }


def main() -> None:
    args = sys.argv[1:]
    kind = "raw"
    if "--kind" in args:
        at = args.index("--kind")
        kind = args[at + 1]
        del args[at : at + 2]
    sizes = [int(a) for a in args] or [512, 2048]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, browser() as b:
        for n in sizes:
            rows.append(run(n, b, Path(tmp), kind))
    print(f"\nkind {kind}")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')} (on a busy machine 1 thread was 3-5x faster here)")
    print(f"{'tokens':>6} | {'head step ms (max)':>18} | {'target':>6} | {'bytes/head step':>15} | "
          f"{'bytes/window step':>17} | {'T²':>9} | {'heads map build':>15} | {'thumbnails':>10}")
    for r in rows:
        t2 = r["T"] ** 2
        target = TARGET_MS.get(r["T"])
        verdict = "" if target is None else ("ok" if r["head_ms"] <= target else "MISS")
        print(f"{r['T']:>6} | {r['head_ms']:>9.0f} ({r['head_max']:>4.0f}) {verdict:>4} | {target or '-':>6} | "
              f"{r['head_bytes']:>15,} | {r['window_bytes']:>17,} | {t2:>9,} | {r['heads_map_s']:>13.1f} s | "
              f"{r['thumb_bytes']:>10,}")
        print(f"{'':>6}   window step median {r['window_ms']:.0f} ms" + (f"; errors: {r['errors']}" if r["errors"] else ""))


if __name__ == "__main__":
    main()
