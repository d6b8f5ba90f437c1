"""A class on a real JupyterHub, in real headless Chromium, offline; prints figures and asserts nothing.

One generation service (`attention-explorer serve --class N`, encrypted with a key file, as the README shows) and
JupyterHub with hub/on_this_machine.py (the department's hub/jupyterhub_config.py with a test login), on 127.0.0.1.
N students log in through the hub's own login page within 5 s, each lands on the dashboard in their own
single-user server, types a prompt of their own and generates 20 tokens. Printed per student: login → prompt box
and → own trace drawn; the memory of the hub, of each student's server (with its kernel) and of the service; then
the same class on one server (`attention-explorer dashboard --class N`, bench_class.py's part 2) for the hub's
overhead per student.

    .venv/bin/python benchmarks/bench_hub.py [--users 10] [--model NAME_OR_PATH] [--skip-class]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_class import (PROMPT_BOX, STEPPER_TEXT, TIMEOUT_MS, Visit, ask_for_own_trace,  # noqa: E402
                         chromium, class_load, visits_of)
from hub_harness import (DASHBOARD_PAGE, Hub, ProxyMissing, find_proxy, process_tree, processes,  # noqa: E402
                         running_hub)  # noqa: E402
from playwright.async_api import Browser, Page, Route  # noqa: E402
from voila_harness import LOCAL_HOSTS, OUTPUT, free_port  # noqa: E402

from explorer.service import RemoteModel  # noqa: E402
from explorer.service import protocol as p  # noqa: E402

CLI = str(Path(sys.executable).with_name("attention-explorer"))


# --- the generation service, as a department runs it
@contextmanager
def service(users: int, model: str | None, state: Path):
    """`attention-explorer serve --class N --key-file ...` on a free port: yields the students' environment (address,
    key, public key, as jupyterhub_config.py reads them) and the service's pid, once it is ready."""
    address, key = f"tcp://127.0.0.1:{free_port()}", secrets.token_urlsafe(16)
    log = OUTPUT / f"bench-hub-service-{address.rsplit(':', 1)[1]}.log"
    command = [CLI, "serve", "--bind", address, "--class", str(users), "--key-file", str(state / "service.key_secret")]
    command += ["--model", model] if model else []
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, p.KEY_ENV: key, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.monotonic() + 600
        while not (public := re.search(r"public key (\S+) \(kept in", log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not print its public key: see {log}")
            time.sleep(0.2)
        remote = RemoteModel(address, key, server_key=public[1])
        while not remote.status(timeout=5).ready:  # the model loaded and its first trace made
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready: see {log}")
            time.sleep(0.5)
        remote.close()
        yield {p.SERVICE_ENV: address, p.KEY_ENV: key, p.PUBLIC_KEY_ENV: public[1]}, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- memory: the hub (JupyterHub and its proxy), each student's server with its kernels, the service
@dataclass
class HubMemory:
    hub: float = 0.0
    users: dict[str, float] = field(default_factory=dict)  # peak per student's server tree
    kernels: dict[str, float] = field(default_factory=dict)  # peak of the kernels in it
    service: float = 0.0
    total: float = 0.0  # peak of hub + servers + service together

    def watch(self, hub: Hub, service_pid: int, done: threading.Event, every: float = 0.5) -> None:
        while True:
            procs = processes()
            now = hub.memory(procs)
            for name, pid in hub.servers(procs).items():
                kernels = sum(rss for cmd, rss in process_tree(pid, procs).values() if "ipykernel" in cmd)
                self.kernels[name] = max(self.kernels.get(name, 0.0), kernels)
            service = sum(rss for _, rss in process_tree(service_pid, procs).values())
            self.total = max(self.total, sum(now.values()) + service)
            self.hub = max(self.hub, now.pop("hub"))
            for name, mb in now.items():
                self.users[name] = max(self.users.get(name, 0.0), mb)
            self.service = max(self.service, service)
            if done.wait(every):
                return


# --- the students
@dataclass
class Student:
    visit: Visit
    name: str
    outside: list[str] = field(default_factory=list)  # requests that would have left this machine
    logged_in: float | None = None  # when the login form was sent
    prompt_box: float | None = None
    own_trace: float | None = None
    service_part: float | None = None  # Generate pressed → trace drawn


async def offline_page(browser: Browser, student: Student) -> Page:
    """A page in a context of its own; every non-local request is blocked and kept (a class may be offline)."""
    page = await (await browser.new_context(viewport={"width": 1280, "height": 1000})).new_page()

    async def route(r: Route) -> None:
        url = r.request.url
        if url.startswith(("data:", "blob:", "about:")) or (urlparse(url).hostname or "") in LOCAL_HOSTS:
            await r.continue_()
        else:
            student.outside.append(url)
            await r.abort()

    await page.route("**/*", route)
    return page


async def attend(browser: Browser, hub: Hub, student: Student) -> None:
    visit = student.visit
    try:
        await asyncio.sleep(visit.offset)
        visit.page = page = await offline_page(browser, student)
        await page.goto(hub.url + "/hub/login", timeout=TIMEOUT_MS)
        await page.locator("#username_input").fill(student.name)
        await page.locator("#password_input").fill("any password")
        student.logged_in = time.monotonic()
        await page.locator("#login_submit").click()
        await page.locator(PROMPT_BOX).wait_for(timeout=TIMEOUT_MS)  # the hub started their server, Voilà the page
        student.prompt_box = time.monotonic() - student.logged_in
        if not page.url.endswith(f"/user/{student.name}/{DASHBOARD_PAGE}"):
            visit.result = f"WRONG PAGE: {page.url}"
            return
        await ask_for_own_trace(page, visit)
        student.own_trace = time.monotonic() - student.logged_in
        student.service_part = time.monotonic() - visit.pressed
        said = re.search(r"Generated (\d+) tokens in ([\d.]+) s", await page.locator(".ae-message").inner_text())
        visit.result = f"ok: {said[1]} tokens in {said[2]} s" if said else "ok"
    except Exception as e:  # reported in the table, not raised
        visit.result = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
        with suppress(Exception):
            visit.result += f" | message: {(await visit.page.locator('.ae-message').inner_text(timeout=2000))[:80]!r}"


async def class_on_the_hub(hub: Hub, students: list[Student]) -> None:
    async with chromium() as browser:
        await asyncio.gather(*(attend(browser, hub, s) for s in students))
        for s in (s for s in students if s.own_trace is not None):  # all traces drawn: none shows another's
            shown = await s.visit.page.evaluate(STEPPER_TEXT)
            if leaks := [o.name for o in students if o is not s and o.visit.marker in shown]:
                s.visit.result = f"LEAK: shows the words of {leaks}"
        (OUTPUT / "bench-hub.png").unlink(missing_ok=True)
        with suppress(Exception):
            await students[0].visit.page.screenshot(path=str(OUTPUT / "bench-hub.png"), full_page=True)
        for s in students:
            with suppress(Exception):
                await s.visit.page.close(run_before_unload=True)


def report(students: list[Student], memory: HubMemory) -> float:
    """Print the table; return the hub's memory per student (MB): its own share and each server with its kernel."""
    print(f"{'student':>10}  {'login→prompt box (s)':>20}  {'login→own trace (s)':>19}  {'(Generate→trace)':>16}  "
          f"{'server+kernel MB':>16}  result")
    for s in students:
        cells = [f"{x:.1f}" if x is not None else "—" for x in (s.prompt_box, s.own_trace, s.service_part)]
        print(f"{s.name:>10}  {cells[0]:>20}  {cells[1]:>19}  {cells[2]:>16}  "
              f"{memory.users.get(s.name, 0):>16.0f}  {s.visit.result}")
    ok = sum(s.visit.result.startswith("ok") for s in students)
    for label, values in [("login → prompt box", [s.prompt_box for s in students]),
                          ("login → own trace", [s.own_trace for s in students])]:
        got = sorted(v for v in values if v is not None)
        if got:
            print(f"{label}: {got[0]:.1f}–{got[-1]:.1f} s, median {got[len(got) // 2]:.1f} s ({len(got)}/{len(students)})")
    outside = [u for s in students for u in s.outside]
    print(f"{ok}/{len(students)} ok; requests that would have left this machine: {len(outside)}"
          + (f" ({outside[:3]})" if outside else ""))
    servers = list(memory.users.values())
    per_user = (memory.hub + sum(servers)) / max(1, len(students))
    if servers:
        kernels = list(memory.kernels.values())
        print(f"memory at peak: hub + proxy {memory.hub:.0f} MB; each student's server with its kernel "
              f"{min(servers):.0f}–{max(servers):.0f} MB (of which the kernel {min(kernels):.0f}–{max(kernels):.0f} "
              f"MB; {sum(servers):.0f} MB for {len(servers)}); "
              f"generation service {memory.service:.0f} MB; all together {memory.total:.0f} MB")
        print(f"per student, the service aside: {per_user:.0f} MB (hub share {memory.hub / len(students):.0f} MB)")
    return per_user


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10, help="students logging in (default 10)")
    parser.add_argument("--model", default=None, help="the service's model (default: the embedded SmolLM2)")
    parser.add_argument("--skip-class", action="store_true",
                        help="skip the same class on one server (attention-explorer dashboard --class N)")
    parser.add_argument("--settle", type=float, default=60, help="one server: seconds from launch to the class")
    args = parser.parse_args()
    try:
        proxy = find_proxy()
    except ProxyMissing as e:
        print(f"bench_hub.py: {e}", file=sys.stderr)
        return 2
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores); "
          f"proxy {proxy}")
    OUTPUT.mkdir(exist_ok=True)
    students = [Student(v, f"student{v.number:02d}") for v in visits_of(args.users)]
    memory, done = HubMemory(), threading.Event()
    with tempfile.TemporaryDirectory(prefix="ae-bench-hub-") as state:
        started = time.monotonic()
        with service(args.users, args.model, Path(state)) as (env, service_pid):
            print(f"generation service ready in {time.monotonic() - started:.1f} s")
            started = time.monotonic()
            with running_hub(env) as hub:
                print(f"JupyterHub answered in {time.monotonic() - started:.1f} s (log: {hub.log}); "
                      f"{args.users} students log in within 5 s")
                watcher = threading.Thread(target=memory.watch, args=(hub, service_pid, done), daemon=True)
                watcher.start()
                try:
                    asyncio.run(class_on_the_hub(hub, students))
                finally:
                    done.set()
                    watcher.join()
    per_user = report(students, memory)
    if not args.skip_class:
        print(f"\nthe same class on one server (attention-explorer dashboard --class {args.users}), for comparison:")
        peaks = asyncio.run(class_load(args.users, args.settle))
        one_server = (peaks.total - peaks.service) / args.users
        print(f"\nper student, the service aside: hub {per_user:.0f} MB, one server {one_server:.0f} MB: the hub's "
              f"overhead {per_user - one_server:+.0f} MB a student ({per_user / one_server:.1f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
