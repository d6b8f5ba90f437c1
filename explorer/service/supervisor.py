"""Keeping the generation service alive: run it as a child process and start it again whenever it dies."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from .server import log

RESTART_PAUSE = 1.0  # seconds before a restart; longer when the service keeps dying at once
QUICK_DEATH = 10.0  # a service that dies this soon after its start counts as failing to start


class ServiceProcess:
    """`attention-explorer serve ARGS` in a child process, restarted when it exits, until `stop()`.

    The key travels in the environment, not on the command line, where other users of the machine could read it.
    """

    def __init__(self, args: list[str], env: dict[str, str]):
        self.command = [sys.executable, "-m", "explorer.cli", "serve", *args, "--parent-pid", str(os.getpid())]
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()  # start and stop of the child do not cross
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, name="generation service supervisor", daemon=True)

    def start(self) -> ServiceProcess:
        self._thread.start()
        return self

    def _keep_alive(self) -> None:
        quick_deaths = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self.process = subprocess.Popen(self.command, env=self.env)
                except OSError as e:
                    log(f"could not start the service: {e}")
                    self.process = None
            code = self.process.wait() if self.process else "not started"
            if self._stopping.is_set():
                return
            quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH else 0
            pause = RESTART_PAUSE * 2 ** min(quick_deaths, 5)
            log(f"the service exited (code {code}); starting it again in {pause:.0f} s")
            if self._stopping.wait(pause):
                return

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self.process
        if process and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
