"""What the teacher showed the class: the last few traces a teacher published, kept by the generation service for
every student's kernel to fetch.

Only a request that carries the teacher's key (made by `--class`, printed for the teacher, never given to the
students' kernels) may publish; anyone with the service's shared key may list and fetch. Bounded: at most
MAX_SHOWN traces of at most MAX_SHOWN_BYTES each; a new one lets the oldest go.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import asdict, dataclass

from ..errors import ExplorerError, SettingsError
from ..trace_file import trace_from_bytes

MAX_SHOWN = 5  # traces kept: what a lesson shows in an hour, and a student's session list stays the student's
MAX_SHOWN_BYTES = 40_000_000  # one trace: a class request's longest trace is ~33 MB (32 new after 256 prompt tokens)
MAX_TITLE = 80  # characters of a shown trace's title


@dataclass(frozen=True)
class Shown:
    """One trace the teacher showed: its number (in order of showing), the trace's id, a title and its bytes."""

    number: int
    trace_id: str
    title: str
    nbytes: int
    at: float  # time.time() when shown

    def to_json(self) -> dict:
        return asdict(self)


class ClassBoard:
    """The traces a teacher showed the class, newest last. `teacher_key` empty: nobody may publish (no class)."""

    def __init__(self, teacher_key: str = "", max_shown: int = MAX_SHOWN, max_bytes: int = MAX_SHOWN_BYTES):
        self.teacher_key, self.max_shown, self.max_bytes = teacher_key, max_shown, max_bytes
        self._items: list[tuple[Shown, bytes]] = []
        self._numbers = 0
        self._lock = threading.Lock()

    def is_teacher(self, key: object) -> bool:
        return bool(self.teacher_key) and isinstance(key, str) and hmac.compare_digest(
            key.encode(), self.teacher_key.encode())

    def publish(self, key: object, title: object, data: bytes) -> Shown:
        """Keep the trace in `data` (the bytes of a trace file) for the class; refused in a sentence unless `key`
        is the teacher's and `data` one trace within bounds. The same trace shown again moves to the end."""
        if not self.teacher_key:
            raise SettingsError("this service has no class: start it with --class N to show traces to a class")
        if not self.is_teacher(key):
            raise SettingsError("only the teacher can show a trace to the class (the teacher's key was not given "
                                "or is not this class's)")
        if len(data) > self.max_bytes:
            raise SettingsError(f"the trace has {len(data) / 1e6:.0f} MB; a class is shown traces of at most "
                                f"{self.max_bytes / 1e6:.0f} MB: show a shorter one")
        trace = trace_from_bytes(data, "the trace to show")  # TraceFileError (ours) for anything else
        if not isinstance(title, str) or not title.strip():
            title = trace.prompt_text or "a trace"
        title = " ".join(title.split())[:MAX_TITLE]
        with self._lock:
            self._items = [(s, d) for s, d in self._items if s.trace_id != trace.id]
            self._numbers += 1
            shown = Shown(self._numbers, trace.id, title, len(data), time.time())
            self._items.append((shown, data))
            del self._items[: max(0, len(self._items) - self.max_shown)]
        return shown

    def listing(self) -> list[Shown]:
        """The traces kept, oldest first."""
        with self._lock:
            return [s for s, _ in self._items]

    def get(self, number: object) -> tuple[Shown, bytes]:
        with self._lock:
            for shown, data in self._items:
                if shown.number == number:
                    return shown, data
        raise ExplorerError(f"the teacher's trace {number} is no longer kept (a class keeps the last "
                            f"{self.max_shown})")
