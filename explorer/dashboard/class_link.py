"""A class page's link to what the teacher shows the class.

Every page of a class asks the generation service, every POLL_SECONDS, which traces the teacher has shown, and
fetches the ones it has not seen yet: they join its session list "from the teacher", with no reload. A teacher's
page (its address carries ?teacher=KEY, which the service checks) also publishes through it. The link has a
ZeroMQ socket of its own: Generate and the explorer's what-if use the model's socket, one call at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from urllib.parse import parse_qs

from ..errors import ExplorerError
from ..service.board import Shown
from ..service.client import RemoteModel
from ..trace import Trace

POLL_SECONDS = 2.0  # a shown trace reaches the students within this (plus its transfer); 200 pages ask 100 times a second


def teacher_key_in(query: str) -> str | None:
    """The teacher's key in a page's query string ("?token=…&teacher=KEY"), if there is one."""
    values = parse_qs(query.lstrip("?")).get("teacher")
    return values[0] if values and values[0] else None


class ClassLink:
    """What the teacher shows the class, for one page of the service `lm`: `start()` polls from a thread and hands
    each trace not seen yet to `on_trace(shown, trace)`; `become_teacher(key)` and `publish(trace, title)` are the
    teacher's."""

    def __init__(self, lm: RemoteModel, on_trace: Callable[[Shown, Trace], None],
                 seen: Callable[[str], bool] = lambda trace_id: False, poll_seconds: float = POLL_SECONDS):
        self.remote = RemoteModel(lm.address, lm.key, server_key=lm.server_key)
        self.on_trace, self.seen, self.poll_seconds = on_trace, seen, poll_seconds
        self.teacher_key: str | None = None
        self._fetched: set[str] = set()  # trace ids taken from the service (or the page's own)
        self._lock = threading.Lock()  # one call at a time on the link's socket
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_teacher(self) -> bool:
        return self.teacher_key is not None

    def become_teacher(self, key: str) -> bool:
        """Whether `key` is the class's teacher key (asked of the service); if so, this page may publish."""
        with self._lock:
            ok = self.remote.is_teacher(key)
        self.teacher_key = key if ok else None
        return ok

    def publish(self, trace: Trace, title: str) -> Shown:
        """Show `trace` to the class (the teacher's page only; the service checks the key)."""
        if self.teacher_key is None:
            raise ExplorerError("only the teacher's page can show a trace to the class")
        with self._lock:
            shown = self.remote.publish(trace, self.teacher_key, title)
        self._fetched.add(shown.trace_id)  # on this page already
        return shown

    def start(self) -> ClassLink:
        self._thread = threading.Thread(target=self._poll, name="the teacher's traces", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> list[Shown]:
        """Fetch what the teacher has shown that this page has not got, oldest first, handing each to `on_trace`;
        return what was handed over."""
        with self._lock:
            new = [s for s in self.remote.class_traces() if s.trace_id not in self._fetched]
        got = []
        for listed in new:
            if self.seen(listed.trace_id):  # the page has it already (the teacher's own)
                self._fetched.add(listed.trace_id)
                continue
            try:
                with self._lock:
                    shown, trace = self.remote.class_trace(listed.number)
            except ExplorerError:  # let go since it was listed: the next one is still fetched
                continue
            self._fetched.add(shown.trace_id)
            self.on_trace(shown, trace)
            got.append(shown)
        return got

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
            except Exception:  # noqa: BLE001 (the service restarting or busy, a bad answer: ask again next time)
                continue
