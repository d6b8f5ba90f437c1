"""The dashboard's model as its explorer gets it: the explorer's what-if calls (in a background thread) and the
dashboard's Generate take turns, and a branch's or a run's progress and errors are told to the dashboard too.

A model's hooks and a generation service's socket each take one call at a time: two threads using one
RemoteModel at once would read each other's answers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import SettingsError
from ..trace import Trace


class TakingTurns:
    """`lm` (a LanguageModel or a RemoteModel) for the explorer: `generate`, `generate_from_ids` and `branch`
    wait for `turn` (the lock the dashboard's Generate holds); anything else is `lm`'s own. A trace written by
    another model (a file loaded) is refused in a sentence: its token ids mean other tokens to `lm`.

    A branch or a generation reports to `on_progress(doing, done, total)`, `on_status(doing, sentence)` and
    `on_done(doing, trace, seconds)` besides its own callbacks; a re-scoring (one forced token) is too quick to
    report. Every failure goes to `on_error(exception)` before it is raised again for the explorer to show too."""

    def __init__(self, lm, turn: threading.RLock, on_progress: Callable[[str, int, int], None],
                 on_status: Callable[[str, str], None], on_done: Callable[[str, Trace, float], None],
                 on_error: Callable[[Exception], None], shown: Callable[[], Trace | None] = lambda: None):
        self.lm, self.turn, self.shown = lm, turn, shown
        self.on_progress, self.on_status, self.on_done, self.on_error = on_progress, on_status, on_done, on_error

    def __getattr__(self, name):
        return getattr(self.lm, name)

    def branch(self, trace: Trace, step: int, token, **kwargs) -> Trace:
        return self._call(self.lm.branch, f"branching at step {step}", (trace, step, token), kwargs, trace)

    def generate_from_ids(self, token_ids, *args, **kwargs) -> Trace:
        doing = None if kwargs.get("forced") is not None else _generating(kwargs)
        return self._call(self.lm.generate_from_ids, doing, (token_ids, *args), kwargs, self.shown())

    def generate(self, prompt: str, *args, **kwargs) -> Trace:
        return self._call(self.lm.generate, _generating(kwargs), (prompt, *args), kwargs)

    def _check_model(self, trace: Trace | None) -> None:
        info = getattr(self.lm, "info", None)
        name = info().name if callable(info) else ""
        if trace is not None and trace.model.name and name and trace.model.name != name:
            raise SettingsError(f"this trace was written by {trace.model.name}, not by the dashboard's model "
                                f"({name}): what-if needs the model that wrote it")

    def _call(self, method: Callable[..., Trace], doing: str | None, args: tuple, kwargs: dict,
              of: Trace | None = None) -> Trace:
        """`method` in turn, on the trace `of` (checked to be of this model), reported as `doing`."""
        if doing is not None:
            kwargs = dict(kwargs, on_token=self._tee_token(doing, kwargs.get("on_token")),
                          on_status=self._tee_status(doing, kwargs.get("on_status")))
        try:
            self._check_model(of)
            with self.turn:
                started = time.perf_counter()
                trace = method(*args, **kwargs)
        except Exception as e:
            self.on_error(e)
            raise
        if doing is not None:
            self.on_done(doing, trace, time.perf_counter() - started)
        return trace

    def _tee_token(self, doing: str, own: Callable | None) -> Callable[[int, int, str], None]:
        def on_token(done: int, total: int, text: str) -> None:
            self.on_progress(doing, done, total)
            if own is not None:
                own(done, total, text)

        return on_token

    def _tee_status(self, doing: str, own: Callable | None) -> Callable[[str], None]:
        def on_status(sentence: str) -> None:
            self.on_status(doing, sentence)
            if own is not None:
                own(sentence)

        return on_status


def _generating(kwargs: dict) -> str:
    return "generating with heads off" if kwargs.get("ablate") else "generating"
