"""Keeping the generation service alive: run it as a child process and start it again whenever it dies."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

from .server import log

RESTART_PAUSE = 1.0  # seconds before a restart; longer when the service keeps dying at once
QUICK_DEATH = 10.0  # a service that dies this soon after its start counts as failing to start


def listening_socket() -> tuple[socket.socket, str]:
    """A TCP socket on a free port of 127.0.0.1, bound and listening, and its ZeroMQ address. Bound here, in the
    dashboard, and handed to each service process it starts: a port chosen here and bound by the child could be
    taken by another program in between (or while a dead service is started again)."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(128)
    return listening, f"tcp://127.0.0.1:{listening.getsockname()[1]}"


class ServiceProcess:
    """`attention-explorer serve ARGS` in a child process, restarted when it exits, until `stop()`; with `listening`
    (see `listening_socket`), every child serves on that socket, which stays bound here until `stop()`.

    The key travels in the environment, not on the command line, where other users of the machine could read it.
    """

    def __init__(self, args: list[str], env: dict[str, str], listening: socket.socket | None = None):
        self.command = [sys.executable, "-m", "explorer.cli", "serve", *args, "--parent-pid", str(os.getpid())]
        self.listening = listening
        if listening is not None:
            self.command += ["--listen-fd", str(listening.fileno())]
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
                    fds = (self.listening.fileno(),) if self.listening is not None else ()
                    self.process = subprocess.Popen(self.command, env=self.env, pass_fds=fds)
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
        if self.listening is not None:
            self.listening.close()
