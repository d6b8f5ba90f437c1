"""The dashboard's memory over a session in a real browser: 20 Generate presses in one page and the viewer
kernels' memory after each (start-up and many pages at once: benchmarks/bench_class.py).

    .venv/bin/python benchmarks/bench_dashboard.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dashboard_harness import fill, start_dashboard, stop, wait_stepper  # noqa: E402
from voila_harness import browser, offline_page  # noqa: E402


def kernel_rss_mb(server_pid: int) -> dict[int, float]:
    """Resident memory of each ipykernel started by the server, from /proc."""
    out = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            pid = int(status.parent.name)
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except (OSError, ValueError):
            continue
        if b"ipykernel" in cmdline and int(fields.get("PPid", 0)) == server_pid:
            out[pid] = int(fields["VmRSS"].split()[0]) / 1024
    return out


def presses(n: int = 20) -> tuple[list[float], list[float], int]:
    proc, url, _ = start_dashboard()
    try:
        with browser() as b:
            page, log = offline_page(b)
            page.goto(url, timeout=180_000)
            wait_stepper(page, "step 0 of", timeout=180_000)
            page.locator(".ae-dashboard input[type=checkbox]").first.uncheck()
            page.locator(".ae-prompt textarea").fill("The cat sat on the mat and")
            fill(page, "ae-max-new-tokens", "24")
            rss, seconds, drawn = [], [], 0
            for i in range(n):
                t = time.monotonic()
                page.locator(".ae-generate").click()
                page.wait_for_function(
                    f"() => /Generated \\d+ tokens .*\\(run {i + 1}\\)/.test(document.querySelector('.ae-message').innerText)"
                    " && /step 0 of/.test(document.querySelector('.stepper-view')?.innerText || '')",
                    timeout=120_000)
                seconds.append(time.monotonic() - t)
                drawn += 1
                rss.append(sum(kernel_rss_mb(proc.pid).values()))
            return rss, seconds, drawn
    finally:
        stop(proc)


def main() -> None:
    rss, seconds, drawn = presses()
    growth = (rss[-1] - rss[0]) / rss[0]
    print(f"20 Generate presses: {drawn}/20 drawn, median {statistics.median(seconds):.1f} s a press; viewer kernels' "
          f"RSS {rss[0]:.0f} MB after the first, {rss[-1]:.0f} MB after the last: {growth:+.1%}   (target < +10 %)")


if __name__ == "__main__":
    main()
