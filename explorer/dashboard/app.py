"""The dashboard: a prompt box and generation settings over the full explorer, with save, load and export.

It runs the same in JupyterLab and under Voilà. It drives any model with `generate(prompt, on_token=,
on_status=, **settings)`: a LanguageModel in this kernel, or (under `attention-explorer dashboard`) the
RemoteModel of the generation service, so that the page's kernel holds no torch and no model. A model that
also branches (`branch`, `generate_from_ids`) gives the explorer its what-if: branching from the stepper and
heads switched off. Every trace of the page (generated, branched, loaded) joins the session in the sidebar,
where a click shows one and two can be compared; Save session downloads them all as one file.
Every callback catches our errors and shows them in the page: the kernel keeps running and what is already
drawn stays.
"""

from __future__ import annotations

import gc
import html
import inspect
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol
from pathlib import Path

import ipywidgets as widgets

from ..errors import ExplorerError, SettingsError
from ..facts import ModelFacts
from ..service.protocol import FIRST_PROMPT, LIMITS_ENV, SERVICE_ENV, Limits
from ..trace import Trace
from ..trace_file import load_traces
from ..views.explorer_view import ExplorerView
from .class_link import ClassLink, teacher_key_in
from .files_panel import FilesPanel
from .page_ready import PageReady
from .session import MAX_BYTES, MAX_TRACES, SessionTrace, first_words, prompt_of
from .session_panel import FULL_WIDTH, SessionPanel
from .taking_turns import TakingTurns

DEFAULT_PROMPT = FIRST_PROMPT
# a class of 30 shares the server's memory: ~3 GB of sessions at most (a class's longest trace is ~33 MB)
CLASS_SESSION_BYTES = 100_000_000

_STYLE = """<style>
.ae-error { color: #b00020; background: #fdecea; padding: 6px 10px; border-radius: 4px; }
.ae-info { color: #1b5e20; background: #edf7ed; padding: 6px 10px; border-radius: 4px; }
.ae-facts { font-size: 12px; line-height: 1.5; }
.ae-facts b { display: inline-block; min-width: 86px; }
.ae-live { font-family: monospace; font-size: 12px; white-space: pre-wrap; max-height: 6em; overflow: auto; }
.ae-session select { font-size: 12px; }
.ae-session-detail { font-size: 12px; overflow-wrap: anywhere; }
.ae-compare-title { font-size: 13px; overflow-wrap: anywhere; }
.ae-session-detail .widget-html-content, .ae-compare-title .widget-html-content { line-height: 1.4; }
</style>"""


def _facts_html(facts: ModelFacts, source: str) -> str:
    rows = [
        ("model", facts.name),
        ("source", source),
        ("parameters", f"{facts.parameters / 1e6:.1f} M" if facts.parameters else "?"),
        ("layers", facts.layers),
        ("heads", facts.describe_heads()),
        ("positions", facts.positional),
        ("context", facts.context_length),
        ("device", facts.device),
        ("dtype", facts.dtype),
    ]
    body = "<br>".join(f"<b>{html.escape(k)}</b>{html.escape(str(v))}" for k, v in rows)
    return f"<div class='ae-facts'>{body}</div>"


def _sentence(error: Exception) -> str:
    """An error's text as the message line's sentence: our errors start in lower case."""
    text = str(error)
    return text[:1].upper() + text[1:]


def _import_views() -> None:
    """Import what the first view needs, so that a preheated kernel has done it before the page asks for it."""
    from ..views.steps import stepper_view  # noqa: F401


class DrivableModel(Protocol):
    """A model the dashboard can drive: LanguageModel (in this kernel), RemoteModel (the generation service) and
    the textbook LM all are."""

    has_chat_template: bool

    def generate(self, prompt: str, max_new_tokens: int = 20, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, *, chat: bool = False,
                 on_token: Callable[[int, int, str], None] | None = None,
                 on_status: Callable[[str], None] | None = None, keep_values: bool = False,
                 progress: bool = True) -> Trace: ...


def _takes(method, keyword: str) -> bool:
    """Whether `method` takes `keyword` by name (the textbook LM takes no on_capture)."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters


def can_branch(lm) -> bool:
    """Whether `lm` does what-if (LanguageModel and RemoteModel do; the textbook LM does not)."""
    return lm is not None and all(callable(getattr(lm, name, None)) for name in ("branch", "generate_from_ids"))


class Dashboard(widgets.VBox):
    """Prompt, settings, Generate, the session's traces and files on the left; the explorer of the current trace
    (or two traces compared) on the right."""

    def __init__(self, lm: DrivableModel | None = None, trace: Trace | None = None, prompt: str = DEFAULT_PROMPT,
                 limits: Limits = Limits(), session_traces: int = MAX_TRACES):
        super().__init__()
        self.add_class("ae-dashboard")
        self.lm = lm
        self.limits = limits
        self.turn = threading.RLock()  # Generate and the explorer's what-if use the model one at a time
        what_if = TakingTurns(lm, self.turn, self._what_if_progress, self._what_if_status, self._what_if_done,
                              self._what_if_error, shown=lambda: self.trace) if can_branch(lm) else None
        self.explorer = ExplorerView(lm=what_if)
        if what_if is not None:  # one lock: the one the explorer's what-if jobs hold while they run
            self.turn = what_if.turn = self.explorer.whatif.jobs.model_lock
        self.message = widgets.HTML().add_class("ae-message")
        self.facts = widgets.HTML()
        self.session_panel = SessionPanel(self.explorer, self._say, self._shown, session_traces,
                                          CLASS_SESSION_BYTES if limits.class_size else MAX_BYTES)
        self.session = self.session_panel.session
        self.class_link: ClassLink | None = None  # what the teacher shows the class (a class page: join_class)
        self.page_query = ""  # the page's query string, once the page has drawn the dashboard
        self.runs = 0  # generations so far, said in the message so that each press can be told apart
        self.presses = 0  # Generate pressed: the service's first trace is shown only before the first press
        self._build_controls(prompt)
        sidebar = widgets.VBox(
            [self.generation_box, widgets.HTML("<hr>"), self.session_panel, self.teacher_box, widgets.HTML("<hr>"),
             self.files,
             widgets.HTML("<hr>"), self.facts],
            layout=widgets.Layout(width="330px", min_width="330px", padding="0 12px 0 0"),
        )
        main = widgets.VBox([self.message, self.explorer, self.session_panel.compare_box],
                            layout=widgets.Layout(flex="1", overflow="auto"))
        self.children = [widgets.HTML(_STYLE), widgets.HBox([sidebar, main])]
        if trace is not None:
            self.show_trace(trace, "", source="given trace")

    @property
    def trace(self) -> Trace | None:
        """The trace shown in the explorer (a branch once one is clicked): what Save trace and Export take."""
        return self.explorer.trace

    # --- controls
    def _build_controls(self, prompt: str) -> None:
        has_chat = bool(self.lm is not None and self.lm.has_chat_template)
        self.prompt = widgets.Textarea(value=prompt, placeholder="Type a prompt", rows=4,
                                       layout=widgets.Layout(width=FULL_WIDTH)).add_class("ae-prompt")
        self.chat = widgets.Checkbox(value=has_chat, description="chat template", disabled=not has_chat, indent=False)
        self.max_new_tokens = widgets.IntText(value=min(20, self.limits.max_new_tokens or 20),
                                              description="new tokens").add_class("ae-max-new-tokens")
        self.mode = widgets.ToggleButtons(options=["greedy", "sample"], value="greedy").add_class("ae-mode")
        self.temperature = widgets.FloatText(value=0.8, description="temperature").add_class("ae-temperature")
        self.top_k = widgets.IntText(value=0, description="top-k (0 off)").add_class("ae-top-k")
        self.top_p = widgets.FloatText(value=1.0, description="top-p").add_class("ae-top-p")
        self.seed = widgets.Text(value="", placeholder="none", description="seed").add_class("ae-seed")
        self.sampling = widgets.VBox([self.temperature, self.top_k, self.top_p, self.seed])
        self.mode.observe(lambda _: self._show_sampling(), "value")
        self._show_sampling()
        self.generate_button = widgets.Button(description="Generate", button_style="primary",
                                              icon="play").add_class("ae-generate")
        self.generate_button.on_click(lambda _: self.press_generate())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width=FULL_WIDTH))
        self.progress.add_class("ae-progress")
        self.progress_label = widgets.Label("").add_class("ae-progress-label")
        self.live = widgets.HTML().add_class("ae-live")  # the new tokens as they come
        limit = self.limits.max_new_tokens
        self.limits_note = widgets.HTML(
            f"<small>This class: at most {limit} new tokens after {self.limits.max_prompt_tokens} prompt "
            f"tokens.</small>" if limit else "")
        self.generation_box = widgets.VBox([
            self.prompt, self.chat, self.max_new_tokens, self.limits_note, self.mode, self.sampling,
            self.generate_button, self.progress, self.progress_label, self.live,
        ])
        if self.lm is None:
            self.generation_box.children = [widgets.HTML(
                "<i>Showing a saved trace: no model is loaded. Start the dashboard with a model to generate.</i>"
            )]
        self.show_class_button = widgets.Button(description="Show to the class", icon="share-square",
                                                layout=widgets.Layout(width="auto")).add_class("ae-show-class")
        self.show_class_button.on_click(lambda _: self.show_to_class())
        self.teacher_box = widgets.VBox([widgets.HTML(
            "<small><b>You are the teacher.</b> Show to the class puts the trace shown here in every student's "
            "session list.</small>"), self.show_class_button], layout=widgets.Layout(display="none"))
        self.teacher_box.add_class("ae-teacher")
        self.files = FilesPanel(self)
        self.upload, self.links = self.files.upload, self.files.links

    def _show_sampling(self) -> None:
        self.sampling.layout.display = "" if self.mode.value == "sample" else "none"

    # --- messages
    def _say(self, text: str, error: bool = False) -> None:
        kind = "ae-error" if error else "ae-info"
        self.message.value = f"<div class='{kind}'>{html.escape(text)}</div>" if text else ""

    def _settings(self) -> dict:
        settings = {"max_new_tokens": self.max_new_tokens.value, "chat": self.chat.value}
        if self.mode.value == "sample":
            seed = self.seed.value.strip()
            if seed and not seed.lstrip("-").isdigit():
                raise SettingsError(f"seed must be a whole number or empty, not {seed!r}")
            settings |= {
                "temperature": self.temperature.value,
                "top_k": self.top_k.value if self.top_k.value != 0 else None,
                "top_p": self.top_p.value if self.top_p.value != 1.0 else None,
                "seed": int(seed) if seed else None,
            }
            if settings["temperature"] == 0:
                raise SettingsError("sampling needs a temperature > 0 (choose greedy for temperature 0)")
        return settings

    # --- actions
    def press_generate(self) -> None:
        """What the Generate button does: generate in a thread of its own, so that the page's kernel keeps answering
        the views while the request waits in a class's queue, and while the logit lens is read after the first
        views are drawn."""
        if self.lm is None or self.generate_button.disabled:
            return
        self.generate_button.disabled = True  # at once: a second press does nothing until this one is done
        self.presses += 1
        threading.Thread(target=self._generate, name="generate", daemon=True).start()

    def generate(self) -> Trace | None:
        """Generate from the prompt box with the settings shown and return the trace (None on an error, which goes
        to the page)."""
        if self.lm is None or self.generate_button.disabled:
            return None
        self.generate_button.disabled = True
        self.presses += 1
        return self._generate()

    def _generate(self) -> Trace | None:
        self._say("")
        if not self.turn.acquire(blocking=False):
            self.progress_label.value = "waiting for the model to come free …"
            self.turn.acquire()
        try:
            settings = self._settings()
            total = settings["max_new_tokens"]
            self.progress.max, self.progress.value = max(1, total if isinstance(total, int) else 1), 0
            self.progress_label.value = "generating ..."
            self.live.value = ""
            text: list[str] = []

            def on_token(done: int, total: int, token: str) -> None:
                self.progress.value = done
                self.progress_label.value = f"{done} / {total} tokens"
                text.append(token)
                self.live.value = html.escape("".join(text))

            def on_status(sentence: str) -> None:
                if not text:  # once tokens come, they are the progress
                    self.progress_label.value = sentence

            started = time.perf_counter()
            prompt, shown = self.prompt.value, []

            def on_capture(trace: Trace) -> None:
                """The trace before its logit lens: the stepper and the heatmap are drawn now, the lens after."""
                seconds = time.perf_counter() - started
                dropped = self.show_trace(trace, f"Generated {trace.n_generated} tokens in {seconds:.1f} s (run "
                                                 f"{self.runs + 1}); the logit lens is being read.", origin=prompt)
                shown.append((trace, dropped))
                self.progress.value = self.progress.max
                self.progress_label.value = "reading the logit lens …"

            early = {"on_capture": on_capture} if _takes(self.lm.generate, "on_capture") else {}
            # values too, so the attention-math view can show the weighted sum of values
            trace = self.lm.generate(prompt, progress=False, on_token=on_token, on_status=on_status,
                                     keep_values=True, **early, **settings)
            seconds = time.perf_counter() - started
            self.runs += 1
            note = f"Generated {trace.n_generated} tokens in {seconds:.1f} s (run {self.runs})."
            if shown and shown[-1][0] is trace:  # shown already: only its lens is new
                self.explorer.lens_ready(trace)
                self.session_panel.refresh()
                self._say(note + shown[-1][1] + "".join(f" {n}" for n in trace.notes))
            else:
                self.show_trace(trace, note, origin=prompt)
            self.progress.value = self.progress.max  # done, also when an end-of-text token stopped it early
            self.progress_label.value = f"{trace.n_generated} tokens, {seconds:.1f} s"
            return trace
        except ExplorerError as e:
            self._say(str(e), error=True)
            self.progress_label.value = ""
        except Exception as e:  # keep the kernel and the page alive whatever happens
            self._say(f"Generation failed: {type(e).__name__}: {e}", error=True)
        finally:
            self.turn.release()
            self.generate_button.disabled = False
        return None

    def show_trace(self, trace: Trace, note: str, source: str = "generated here", origin: str | None = None) -> str:
        """Add `trace` to the session (labelled by `origin`: the prompt typed, a file's name), draw it in every
        view (a new family in the explorer) and say what happened and whose it is; returns what the session let
        go to make room, in a sentence (or "")."""
        dropped = self.session_panel.add(trace, source, origin)
        self.links.value = ""
        gc.collect()  # the old trace's arrays go now, not at some later collection
        self._say(note + dropped + "".join(f" {n}" for n in trace.notes))  # what the trace lacks, and why
        return dropped

    def show_traces(self, traces: list[Trace], note: str, source: str, origin: str | None = None) -> None:
        """Add the traces of a file to the session as one family (a tree of branches) and show the first."""
        dropped = self.session_panel.add_file(traces, source, origin)
        self.links.value = ""
        gc.collect()
        self._say(note + dropped)

    def _shown(self, entry: SessionTrace | None) -> None:
        """The explorer shows another trace (any way): its model's facts and where it came from."""
        if entry is not None:
            self.facts.value = _facts_html(entry.trace.model, entry.source)

    # --- what-if in the explorer, told here too
    def _what_if_progress(self, doing: str, done: int, total: int) -> None:
        self.live.value = ""  # the text of the last Generate: not this
        self.progress.max, self.progress.value = max(1, total), done
        self.progress_label.value = f"{doing}: {done} / {total} tokens"

    def _what_if_status(self, doing: str, sentence: str) -> None:
        self.live.value = ""
        self.progress_label.value = f"{doing}: {sentence}"

    def _what_if_done(self, doing: str, trace: Trace, seconds: float) -> None:
        self.progress.value = self.progress.max
        self.progress_label.value = f"{doing}: done, {seconds:.1f} s"

    def _what_if_error(self, error: Exception) -> None:
        """One sentence in the message line; the explorer keeps its trace (and says it in its own status line)."""
        self.progress_label.value = ""
        if isinstance(error, ExplorerError):
            self._say(_sentence(error), error=True)
        else:
            self._say(f"The what-if request failed ({type(error).__name__}: {error}); the trace shown stays.",
                      error=True)

    def save(self) -> Path | None:
        """Save the current trace (next to the notebook, or only as a download in a class)."""
        return self.files.save()

    def save_session(self) -> Path | None:
        """Save every trace of the session as one file (next to the notebook, or only as a download in a class)."""
        return self.files.save_session()

    def export(self) -> None:
        """Offer the current trace as a standalone HTML page that opens offline."""
        self.files.export()

    # --- what the teacher shows the class
    def join_class(self) -> None:
        """Follow what the class's teacher shows: the traces come into the session list by themselves (a page of a
        class on the generation service; nothing happens otherwise)."""
        if self.class_link is not None or not self.limits.class_size or not hasattr(self.lm, "class_traces"):
            return
        self.class_link = ClassLink(self.lm, self._from_teacher, seen=lambda i: self.session.get(i) is not None)
        self.class_link.start()

    def become_teacher(self, key: str) -> bool:
        """Unlock Show to the class with the teacher's key (`--class` prints the teacher's address, which
        carries it); a wrong key leaves the page a student's, and says so."""
        if self.class_link is None:
            self._say("Only a page of a class can show traces to the class.", error=True)
            return False
        try:
            ok = self.class_link.become_teacher(key)
        except ExplorerError as e:
            self._say(f"Could not check the teacher's key: {e}", error=True)
            return False
        if not ok:
            self._say("The teacher's key in this page's address is not this class's: this page is a student's.",
                      error=True)
            return False
        self.teacher_box.layout.display = ""
        return True

    def show_to_class(self):
        """Show the trace on this page to the class (the teacher's page): it joins every student's session list,
        marked "teacher"; returns what the service kept (its number and title), or None with the reason said."""
        trace = self.trace
        if self.class_link is None or not self.class_link.is_teacher:
            self._say("Only the teacher's page can show a trace to the class.", error=True)
            return None
        if trace is None or trace.lens_pending:
            self._say("Wait for the trace to be complete, then show it.", error=True)
            return None
        entry = self.session.get(trace.id)
        title = entry.words if entry is not None else first_words(prompt_of(trace))
        self.show_class_button.disabled = True
        try:
            shown = self.class_link.publish(trace, title)
        except ExplorerError as e:
            self._say(_sentence(e), error=True)
            return None
        finally:
            self.show_class_button.disabled = False
        self._say(f"Shown to the class: “{shown.title}” is in every student's session list now.")
        return shown

    def _from_teacher(self, shown, trace: Trace) -> None:
        """A trace the teacher showed: into the session list, marked, while the student's own trace stays shown."""
        with self.turn:  # after a Generate or a what-if that is running: it changes the session too
            dropped = self.session_panel.add_aside(trace, "from the teacher", origin=shown.title, mark="teacher · ")
            self._say(f"The teacher showed the class “{shown.title}”: it is in your session list, marked "
                      f"“teacher”; click it to explore it." + dropped)

    # --- the first trace from the generation service
    def open_first_trace(self, trace: Trace | None = None) -> None:
        """Show the first trace (asked of the service now if not given); if the service has none yet, say how far
        the model's loading is and show the first trace from a background thread when it comes."""
        if trace is None:
            try:
                trace = self.lm.first_trace(timeout=2)
            except ExplorerError:
                pass
        if trace is not None:
            self._refresh_chat()
            self._show_first_trace(trace)
            return
        self._while_untouched(lambda: (self._say("The model is loading: you can type a prompt already."),
                                       setattr(self.progress_label, "value", "loading the model …")))
        threading.Thread(target=self._wait_for_first_trace, name="first trace", daemon=True).start()

    def _show_first_trace(self, trace: Trace) -> None:
        """Show the service's first trace, unless Generate has been pressed or a trace is shown: checked and shown
        holding the model's turn, so a Generate pressed meanwhile waits and its trace comes after (never under)."""
        with self.turn:
            if self.presses or self.trace is not None:
                return
            self.progress_label.value = ""
            self.show_trace(trace, "Ready: type a prompt and press Generate.", source="the generation service",
                            origin=FIRST_PROMPT)

    def _while_untouched(self, tell: Callable[[], None]) -> None:
        """`tell` the page how the loading goes, only while no Generate has been pressed and no trace is shown
        (checked and told holding the turn; a Generate holding it is left alone)."""
        if not self.turn.acquire(blocking=False):
            return
        try:
            if not self.presses and self.trace is None:
                tell()
        finally:
            self.turn.release()

    def _wait_for_first_trace(self, give_up: float = 600) -> None:
        from ..service.client import RemoteModel

        # a socket of its own: Generate may use the other meanwhile
        lm = RemoteModel(self.lm.address, self.lm.key, server_key=self.lm.server_key)
        deadline = time.monotonic() + give_up
        try:
            while time.monotonic() < deadline:
                try:
                    status = lm.status(timeout=3)
                except ExplorerError as e:
                    self._while_untouched(lambda e=e: setattr(self.progress_label, "value",
                                                              f"waiting for the generation service … ({e})"))
                    time.sleep(1)  # an answer that is an error comes at once: do not ask again at once
                    continue
                if status.state == "failed":
                    self._say(f"The model could not be loaded: {status.error}", error=True)
                    return
                if not status.ready:
                    self._while_untouched(lambda s=status: self._tell_loading(s.percent, s.stage))
                    time.sleep(0.5)
                    continue
                self.lm.facts = lm.facts
                self._refresh_chat()
                trace = lm.first_trace()
                if trace is not None:
                    self._show_first_trace(trace)
                return
            self._while_untouched(lambda: self._say(f"The generation service was not ready after {give_up:.0f} s: "
                                                    "press Generate to try.", error=True))
        except Exception as e:  # a background thread has no one else to tell
            self._say(f"Could not get the first trace: {type(e).__name__}: {e}", error=True)
        finally:
            lm.close()

    def _tell_loading(self, percent: int, stage: str) -> None:
        self.progress.max, self.progress.value = 100, percent
        self.progress_label.value = f"loading the model … {percent}% ({stage})"

    def _refresh_chat(self) -> None:
        """Offer the chat template once the model's facts are known; a box the student could already use
        (it was enabled) keeps the student's choice."""
        if self.chat.disabled:
            self.chat.value = self.lm.has_chat_template
            self.chat.disabled = not self.lm.has_chat_template

    def when_shown(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the page has drawn the dashboard (the first view of a trace takes the browser
        about 1.5 s to build: the prompt box comes first); `page_query` is the page's query string by then."""

        def shown() -> None:
            self.page_query = ready.query
            callback()

        ready = PageReady(shown)
        self.children = [*self.children, ready]

    @classmethod
    def from_environment(cls) -> Dashboard:
        """What `attention-explorer dashboard` starts: a saved trace ($ATTENTION_EXPLORER_TRACE) with no model;
        the generation service at $ATTENTION_EXPLORER_SERVICE (the viewer kernel holds no model); or, run as a
        plain notebook, a model ($ATTENTION_EXPLORER_MODEL, default the embedded one) and a first trace."""
        limits = Limits.from_json(os.environ.get(LIMITS_ENV))
        trace_path = os.environ.get("ATTENTION_EXPLORER_TRACE")
        if os.environ.get(SERVICE_ENV) and not trace_path:
            from ..service.client import RemoteModel

            lm = RemoteModel.from_environment()
            try:  # now, while Voilà preheats the kernel, not when a student comes; it also tells the model's facts
                first = lm.first_trace(timeout=2)
            except ExplorerError:
                first = None
            board = cls(lm=lm, limits=limits)
            board._say("Opening the first trace …")
            _import_views()

            def opened() -> None:
                board.open_first_trace(first)
                board.join_class()
                teacher = teacher_key_in(board.page_query)
                if teacher and board.class_link is not None:
                    board.become_teacher(teacher)

            board.when_shown(opened)
            return board
        if trace_path:
            board = cls(lm=None, limits=limits)

            def show() -> None:
                try:
                    board.show_traces(load_traces(trace_path), f"Loaded {trace_path}.",  # one, or a tree
                                      source=f"file {Path(trace_path).name}", origin=Path(trace_path).name)
                except ExplorerError as e:
                    board._say(str(e), error=True)

            board._say("Opening the trace …")
            _import_views()
            board.when_shown(show)
            return board
        from ..models import load_model

        lm = load_model(os.environ.get("ATTENTION_EXPLORER_MODEL") or None, progress=False)
        board = cls(lm=lm)
        board.generate()
        return board
