"""Load test of the dashboard, in real headless Chromium, offline; prints figures and asserts nothing.

1. one user: `attention-explorer dashboard` launched to the first trace drawn (cold), then a second page opened
   on the warm server (open to prompt box, open to first trace);
2. a class: `attention-explorer dashboard --class N` left to settle as a teacher would, then N students arriving
   within 5 s, each generating from a prompt of their own: per-page times, isolation, peak memory of the server.

    .venv/bin/python benchmarks/bench_class.py [--students 30] [--settle 60] [--runs 3] [--skip-single] [--skip-class]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import string
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from playwright.async_api import Browser, Locator, Page, Route, async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from voila_harness import (CHROMIUM, CHROMIUM_ARGS, LOCAL_HOSTS, OUTPUT, free_port, process_tree, stop_tree,  # noqa: E402
                           voila_server, write_notebook)

CLI = str(Path(sys.executable).with_name("attention-explorer"))
TIMEOUT_MS = 300_000
PROMPT_BOX = ".ae-prompt textarea"
FIRST_TRACE = "() => /step 0 of/.test(document.querySelector('.stepper-view')?.innerText || '')"
# the stepper's text as letters and digits only: tokens are drawn with visible-space marks ("␣") between words
STEPPER_TEXT = ("() => (document.querySelector('.stepper-view')?.innerText || '')"
                ".toLowerCase().replace(/[^a-z0-9]/g, '')")
OWN_TRACE = (f"m => /Generated/.test(document.querySelector('.ae-message')?.innerText || '')"
             f" && ({STEPPER_TEXT})().includes(m)")


# --- the server and its processes
@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    launched: float  # time.monotonic() when the command started


def launch(*args: str, timeout: float = 300) -> Server:
    """Run `attention-explorer dashboard ARGS` on a free port until Voilà answers; with --class, the page's address
    carries the token the command prints."""
    port = free_port()
    OUTPUT.mkdir(exist_ok=True)
    log = OUTPUT / f"bench-class-{port}.log"
    launched = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([CLI, "dashboard", "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base, query = f"http://127.0.0.1:{port}/", ""
    server = Server(proc, base, log, launched)
    try:
        while time.monotonic() - launched < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited with {proc.returncode}: see {log}")
            if "--class" in args and not query:
                if token := re.search(r"\?token=([\w-]+)", log.read_text()):
                    query = f"?token={token[1]}"
                    server.url = base + query
                time.sleep(0.2)
                continue
            try:
                urllib.request.urlopen(f"{base}voila/static/voila.js{query}", timeout=2).close()
                return server
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the dashboard did not answer within {timeout:.0f} s: see {log}")
    except BaseException:
        stop(server)
        raise


def stop(server: Server) -> None:
    """Terminate the launcher, killing it after 15 s; kill (and say) any of its processes alive 15 s later."""
    killed, outlived = stop_tree(server.proc, 15)
    if killed:
        print(f"  ! the launcher did not stop within 15 s of SIGTERM: killed (see {server.log})")
    for pid in outlived:
        print(f"  ! process {pid} outlived the launcher by 15 s: killed (see {server.log})")


@dataclass
class MemoryPeaks:
    """The server's process tree sampled every `every` s until `done`: peaks in MB."""

    before: float = 0.0  # the whole tree at the first sample
    total: float = 0.0
    service: float = 0.0
    kernels: int = 0
    kernels_mb: float = 0.0

    def watch(self, root: int, done: threading.Event, every: float = 0.5) -> None:
        while True:
            tree = process_tree(root).values()
            kernels = [rss for cmd, rss in tree if "ipykernel" in cmd]
            self.before = self.before or sum(rss for _, rss in tree)
            self.total = max(self.total, sum(rss for _, rss in tree))
            self.service = max(self.service, *(rss for cmd, rss in tree if "explorer.cli serve" in cmd), 0)
            self.kernels, self.kernels_mb = max(self.kernels, len(kernels)), max(self.kernels_mb, sum(kernels))
            if done.wait(every):
                return


# --- the browser: Playwright's async API, so that many pages of one Chromium load at once
@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser  # closed with Playwright


async def offline_page(browser: Browser) -> Page:
    """As voila_harness.offline_page: a page in a context of its own, every non-local request blocked."""
    page = await (await browser.new_context(viewport={"width": 1280, "height": 1000})).new_page()

    async def route(r: Route) -> None:
        url = r.request.url
        local = url.startswith(("data:", "blob:", "about:")) or (urlparse(url).hostname or "") in LOCAL_HOSTS
        await (r.continue_() if local else r.abort())

    await page.route("**/*", route)
    return page


async def close(pages: list[Page]) -> None:
    for page in pages:
        with suppress(Exception):
            await page.close(run_before_unload=True)
            await page.context.close()


def spread(label: str, seconds: list[float], target: str) -> str:
    return (f"{label}: median {statistics.median(seconds):.1f} s, range {min(seconds):.1f}–{max(seconds):.1f} s "
            f"over {len(seconds)} run(s)   (target {target})")


# --- 1. one user
async def single_user_cold(runs: int) -> None:
    cold, warm_box, warm_trace = [], [], []
    async with chromium() as browser:
        for _ in range(runs):
            pages: list[Page] = []
            server = await asyncio.to_thread(launch)
            try:
                pages.append(await offline_page(browser))
                await pages[0].goto(server.url, wait_until="commit", timeout=TIMEOUT_MS)
                await pages[0].wait_for_function(FIRST_TRACE, timeout=TIMEOUT_MS)
                cold.append(time.monotonic() - server.launched)
                await asyncio.sleep(8)  # the pool refills its kernel
                pages.append(await offline_page(browser))
                opened = time.monotonic()
                await pages[1].goto(server.url, wait_until="commit", timeout=TIMEOUT_MS)
                await pages[1].locator(PROMPT_BOX).wait_for(timeout=TIMEOUT_MS)
                warm_box.append(time.monotonic() - opened)
                await pages[1].wait_for_function(FIRST_TRACE, timeout=TIMEOUT_MS)
                warm_trace.append(time.monotonic() - opened)
            finally:
                await close(pages)
                await asyncio.to_thread(stop, server)
    print(spread("launch → first trace drawn, cold", cold, "≤ 10 s"))
    print(spread("warm server, second page: open → prompt box", warm_box, "≤ 3 s"))
    print(spread("warm server, second page: open → first trace drawn", warm_trace, "none set"))


# --- 2. a class
@dataclass
class Visit:
    number: int
    prompt: str  # a plain continuation that runs to 20 tokens (a question alone ends at once)
    marker: str  # the page's own words, normalised as STEPPER_TEXT: no other page may show them
    offset: float  # planned arrival, s after the first possible one
    page: Page | None = None
    opened: float | None = None
    served: float | None = None  # the server's part: the whole HTML page received
    prompt_box: float | None = None
    own_trace: float | None = None
    pressed: float | None = None  # when Generate was pressed
    result: str = "not run"


async def arrive(browser: Browser, url: str, visit: Visit) -> Page:
    """Open the page at the visit's time; note when the server had sent it and when the prompt box showed."""
    await asyncio.sleep(visit.offset)
    visit.page = page = await offline_page(browser)
    visit.opened = time.monotonic()
    response = await page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
    if response is not None:
        await response.finished()
        visit.served = time.monotonic() - visit.opened
    await page.locator(PROMPT_BOX).wait_for(timeout=TIMEOUT_MS)
    visit.prompt_box = time.monotonic() - visit.opened
    return page


async def ask_for_own_trace(page: Page, visit: Visit) -> Locator:
    """Type the student's prompt (no chat template, 20 new tokens), press Generate and wait until their own trace
    is drawn; returns the chat box (a test that it stayed unchecked). `visit.pressed` is when Generate was pressed."""
    await page.locator(PROMPT_BOX).fill(visit.prompt)
    chat = page.locator(".ae-dashboard input[type=checkbox]").first
    if await chat.is_checked():
        await chat.uncheck(timeout=TIMEOUT_MS)
    await page.locator(".ae-max-new-tokens input").fill("20")
    await page.locator(".ae-max-new-tokens input").press("Enter")
    visit.pressed = time.monotonic()
    await page.locator(".ae-generate").click(timeout=TIMEOUT_MS)
    await page.wait_for_function(OWN_TRACE, arg=visit.marker, timeout=TIMEOUT_MS)
    return chat


async def student(browser: Browser, url: str, visit: Visit) -> None:
    try:
        page = await arrive(browser, url, visit)
        chat = await ask_for_own_trace(page, visit)
        visit.own_trace = time.monotonic() - visit.opened
        said = re.search(r"Generated (\d+) tokens in ([\d.]+) s", await page.locator(".ae-message").inner_text())
        visit.result = f"ok: {said[1]} tokens in {said[2]} s" if said else "ok"
        visit.result += ", but the chat box was checked again" if await chat.is_checked() else ""
    except Exception as e:  # reported in the table, not raised
        visit.result = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        with suppress(Exception):
            visit.result += f" | message: {(await visit.page.locator('.ae-message').inner_text(timeout=2000))[:80]!r}"


def visits_of(n: int, seed: int = 0) -> list[Visit]:
    """n students, each with a distinct six-letter word no model will guess, arriving within 5 s."""
    rng = random.Random(seed)
    codes = ["".join(string.ascii_lowercase[k // 26**j % 26] for j in range(6)) for k in rng.sample(range(26**6), n)]
    return [Visit(i, f"Note of Student-{i:03d} ({code}): the number {i} plus the number {i} makes",
                  f"student{i:03d}{code}", rng.uniform(0, 5)) for i, code in enumerate(codes, 1)]


async def class_load(n: int, settle: float) -> MemoryPeaks:
    visits, peaks, done = visits_of(n), MemoryPeaks(), threading.Event()
    server = await asyncio.to_thread(launch, "--class", str(n))
    watcher = threading.Thread(target=peaks.watch, args=(server.proc.pid, done), daemon=True)
    print(f"class of {n}: Voilà answered {time.monotonic() - server.launched:.1f} s after launch; the class arrives "
          f"{settle:.0f} s after launch (log: {server.log})")
    try:
        async with chromium() as browser:
            await asyncio.sleep(max(0.0, settle - (time.monotonic() - server.launched)))
            watcher.start()
            await asyncio.gather(*(student(browser, server.url, v) for v in visits))
            for v in (v for v in visits if v.own_trace is not None):  # all traces drawn: none shows another's
                try:
                    shown = await v.page.evaluate(STEPPER_TEXT)
                except Exception as e:  # a page that died afterwards is reported, not raised
                    v.result = f"FAILED after its trace: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
                    continue
                if leaks := [o.number for o in visits if o is not v and o.marker in shown]:
                    v.result = f"LEAK: shows the words of page(s) {leaks}"
            await close([v.page for v in visits if v.page is not None])
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join()
        await asyncio.to_thread(stop, server)
    first = min((v.opened for v in visits if v.opened is not None), default=0.0)
    rows = [(v.opened - first if v.opened is not None else None, v.served, v.prompt_box, v.own_trace)
            for v in visits]
    print(f"{'page':>4}  {'arrived at (s)':>14}  {'open→page served (s)':>20}  {'open→prompt box (s)':>19}  "
          f"{'open→own trace (s)':>18}  result")
    for v, row in zip(visits, rows):
        cells = [f"{x:.1f}" if x is not None else "—" for x in row]
        print(f"{v.number:>4}  {cells[0]:>14}  {cells[1]:>20}  {cells[2]:>19}  {cells[3]:>18}  {v.result}")
    worst = [max((x for x in column if x is not None), default=float("nan")) for column in zip(*rows)]
    ok = sum(v.result.startswith("ok") for v in visits)
    print(f"{'max':>4}  {worst[0]:>14.1f}  {worst[1]:>20.1f}  {worst[2]:>19.1f}  {worst[3]:>18.1f}  {ok}/{n} ok")
    print(f"memory of the server's process tree: {peaks.before:.0f} MB as the class arrived, peak {peaks.total:.0f} "
          f"MB; generation service peak {peaks.service:.0f} MB; up to {peaks.kernels} ipykernels, peak "
          f"{peaks.kernels_mb:.0f} MB together")
    print("targets: prompt box ≤ 5 s, own trace ≤ 60 s, peak ≤ 3 GB (10 students) / ≤ 5 GB (30)")
    return peaks


BARE_CELL = "import ipywidgets as w\nw.VBox([w.Textarea().add_class('ae-prompt'), w.Button(description='Generate')])"


def bare_voila(n: int) -> None:
    """The floor under the prompt-box figure: the same n pages, arriving the same way in one Chromium, on a bare
    Voilà page (a text box and a button, n kernels preheated): what Voilà and the browser cost by themselves."""
    notebook = write_notebook(OUTPUT / "bench-bare-voila.ipynb", [BARE_CELL])
    visits = visits_of(n)
    with voila_server(notebook, extra_args=["--preheat_kernel=True", f"--pool_size={n}",
                                            "--VoilaKernelManager.fill_delay=0"]) as url:
        time.sleep(5 + n)  # the pool is filled and the machine quiet again, as for the class

        async def pages() -> None:
            async with chromium() as browser:
                await asyncio.gather(*(arrive(browser, url + "/", v) for v in visits), return_exceptions=True)
                await close([v.page for v in visits if v.page is not None])

        asyncio.run(pages())
    shown = [v.prompt_box for v in visits if v.prompt_box is not None]
    print(f"floor, a bare Voilà page (text box + button), the same {n} pages in one Chromium: open → prompt box "
          f"{min(shown):.1f}–{max(shown):.1f} s ({len(shown)}/{n} shown)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=10, help="class size (default 10; try 30)")
    parser.add_argument("--settle", type=float, default=60, help="seconds from launch to the class arriving")
    parser.add_argument("--runs", type=int, default=3, help="cold launches for the one-user figures")
    parser.add_argument("--skip-single", action="store_true", help="skip the one-user figures")
    parser.add_argument("--skip-class", action="store_true", help="skip the class")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    parts = [] if args.skip_single else [("one user", lambda: single_user_cold(args.runs))]
    parts += [] if args.skip_class else [("class", lambda: class_load(args.students, args.settle))]
    for name, part in parts:
        try:
            asyncio.run(part())
        except Exception as e:  # one part failing still lets the other run
            print(f"{name}: FAILED: {type(e).__name__}: {e}")
    if not args.skip_class:
        bare_voila(args.students)


if __name__ == "__main__":
    main()
