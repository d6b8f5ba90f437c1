"""A real JupyterHub on this machine (hub/on_this_machine.py: the department's hub/jupyterhub_config.py with a
test-only login), its proxy found where `make install` puts it, and students logging in through its own login page.

Used by tests/test_browser_hub.py and benchmarks/bench_hub.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from voila_harness import OUTPUT, free_port, process_tree, processes, stop_tree

ROOT = Path(__file__).resolve().parents[1]
HUB_CONFIG = ROOT / "hub" / "on_this_machine.py"
PROXY = "configurable-http-proxy"
# where `make install` puts the proxy: npm's prefix inside the virtual environment
LOCAL_PROXY = Path(sys.prefix) / "node" / "node_modules" / ".bin" / PROXY
DASHBOARD_PAGE = "voila/render/dashboard.ipynb"


class ProxyMissing(RuntimeError):
    """configurable-http-proxy (JupyterHub's proxy, a node program) is neither installed here nor on PATH."""


def find_proxy() -> str:
    """configurable-http-proxy: the one `make install` puts in the virtual environment, else the one on PATH."""
    if LOCAL_PROXY.exists():
        return str(LOCAL_PROXY)
    if found := shutil.which(PROXY):
        return found
    raise ProxyMissing(f"JupyterHub needs {PROXY} (a node program), found neither at {LOCAL_PROXY} nor on PATH: "
                       f"run `make install` (it runs `npm install --prefix {LOCAL_PROXY.parents[2]} "
                       f"{PROXY}`), or `npm install -g {PROXY}`")


@dataclass
class Hub:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT, the proxy's public address
    state: Path  # database, cookie secret, the students' homes
    log: Path

    def servers(self, procs: dict | None = None) -> dict[str, int]:
        """user name -> pid of their running single-user server (`attention-explorer singleuser`, a child of the hub)."""
        found = {}
        for pid, (cmd, _) in process_tree(self.proc.pid, procs).items():
            if "attention-explorer singleuser" in cmd:
                with suppress(OSError, KeyError):
                    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    found[dict(e.split(b"=", 1) for e in environ if b"=" in e)[b"JUPYTERHUB_USER"].decode()] = pid
        return found

    def memory(self, procs: dict | None = None) -> dict[str, float]:
        """Resident MB: 'hub' (JupyterHub and its proxy) and each user's server with its kernels, by user name."""
        procs = processes() if procs is None else procs  # one look at the process table for all
        tree = process_tree(self.proc.pid, procs)
        users = self.servers(procs)
        per_user = {name: sum(rss for _, rss in process_tree(pid, procs).values()) for name, pid in users.items()}
        inside = {p for pid in users.values() for p in process_tree(pid, procs)}
        return {"hub": sum(rss for pid, (_, rss) in tree.items() if pid not in inside), **per_user}


@contextmanager
def running_hub(service_env: dict[str, str], timeout: float = 120) -> Iterator[Hub]:
    """JupyterHub with hub/on_this_machine.py on free 127.0.0.1 ports, its state in a temporary folder, the
    students' kernels given `service_env` (the service's address and keys): yields the Hub once it answers;
    stops it, its proxy and every student's server afterwards. Its log goes to tests/output/hub-PORT.log."""
    proxy = find_proxy()
    state = Path(tempfile.mkdtemp(prefix="ae-hub-"))
    port = free_port()
    env = {**os.environ, **service_env,
           "ATTENTION_EXPLORER_HUB_DIR": str(state), "ATTENTION_EXPLORER_HUB_PORT": str(port),
           "ATTENTION_EXPLORER_HUB_API_PORT": str(free_port()), "ATTENTION_EXPLORER_HUB_HUB_PORT": str(free_port()),
           "ATTENTION_EXPLORER_PROXY": proxy,
           "ATTENTION_EXPLORER_CLI": str(Path(sys.executable).with_name("attention-explorer")),
           "HF_HUB_OFFLINE": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    OUTPUT.mkdir(exist_ok=True)
    log = OUTPUT / f"hub-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("jupyterhub")), "-f", str(HUB_CONFIG)],
                                cwd=state, env=env, stdout=out, stderr=subprocess.STDOUT)
    hub = Hub(proc, f"http://127.0.0.1:{port}", state, log)
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {proc.returncode}: see {log}\n{log.read_text()[-3000:]}")
            with suppress(OSError), urllib.request.urlopen(hub.url + "/hub/health", timeout=2) as r:
                if r.status == 200:
                    break
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"jupyterhub did not answer within {timeout:.0f} s: see {log}")
            time.sleep(0.2)
        yield hub
    finally:
        stop(hub)


def stop(hub: Hub) -> None:
    """Stop the hub (it stops the students' servers and its proxy itself); kill whatever of it outlives 30 s."""
    stop_tree(hub.proc, 30)
    shutil.rmtree(hub.state, ignore_errors=True)


def log_in(page, hub: Hub, name: str, timeout: float = 60_000) -> None:
    """Log in as `name` through the hub's own login page (the test login takes any password)."""
    page.goto(hub.url + "/hub/login", timeout=timeout)
    page.locator("#username_input").fill(name)
    page.locator("#password_input").fill("any password")
    page.locator("#login_submit").click()
