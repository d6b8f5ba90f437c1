"""The dashboard: a prompt box and generation settings over the full explorer, with save, load and export.

It runs the same in JupyterLab and under Voilà. It drives any model with `generate(prompt, on_token=,
on_status=, **settings)`: a LanguageModel in this kernel, or (under `attention-explorer dashboard`) the
RemoteModel of the generation service, so that the page's kernel holds no torch and no model. Every callback
catches our errors and shows them in the page: the kernel keeps running and what is already drawn stays.
"""

from __future__ import annotations

import base64
import gc
import html
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Protocol
from pathlib import Path

import ipywidgets as widgets

from ..errors import ExplorerError, SettingsError
from ..facts import ModelFacts
from ..service.protocol import FIRST_PROMPT, KEY_ENV, LIMITS_ENV, SERVICE_ENV, Limits
from ..trace import Trace
from ..trace_file import load_trace, trace_from_bytes
from ..views.explorer_view import ExplorerView
from .page_ready import PageReady

DEFAULT_PROMPT = FIRST_PROMPT
DOWNLOAD_LIMIT = 64_000_000  # bytes; larger files are saved on the server only

_STYLE = """<style>
.ae-error { color: #b00020; background: #fdecea; padding: 6px 10px; border-radius: 4px; }
.ae-info { color: #1b5e20; background: #edf7ed; padding: 6px 10px; border-radius: 4px; }
.ae-facts { font-size: 12px; line-height: 1.5; }
.ae-facts b { display: inline-block; min-width: 86px; }
.ae-live { font-family: monospace; font-size: 12px; white-space: pre-wrap; max-height: 6em; overflow: auto; }
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


def _import_views() -> None:
    """Import what the first view needs, so that a preheated kernel has done it before the page asks for it."""
    from ..views import stepper_view  # noqa: F401


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _download_link(data: bytes, filename: str, mime: str, label: str) -> str:
    encoded = base64.b64encode(data).decode()
    return (f"<a download='{html.escape(filename)}' href='data:{mime};base64,{encoded}' "
            f"class='ae-download'>{html.escape(label)}</a>")


class DrivableModel(Protocol):
    """A model the dashboard can drive: LanguageModel (in this kernel), RemoteModel (the generation service) and
    the textbook LM all are."""

    has_chat_template: bool

    def generate(self, prompt: str, max_new_tokens: int = 20, temperature: float = 0.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, *, chat: bool = False,
                 on_token: Callable[[int, int, str], None] | None = None,
                 on_status: Callable[[str], None] | None = None, keep_values: bool = False,
                 progress: bool = True) -> Trace: ...


class Dashboard(widgets.VBox):
    """Prompt, settings and Generate on the left; the explorer of the current trace on the right."""

    def __init__(self, lm: DrivableModel | None = None, trace: Trace | None = None, prompt: str = DEFAULT_PROMPT,
                 limits: Limits = Limits()):
        super().__init__()
        self.add_class("ae-dashboard")
        self.lm = lm
        self.limits = limits
        self.explorer = ExplorerView()
        self.message = widgets.HTML().add_class("ae-message")
        self.facts = widgets.HTML()
        self.trace: Trace | None = None
        self.runs = 0  # generations so far, said in the message so that each press can be told apart
        self._build_controls(prompt)
        sidebar = widgets.VBox(
            [self.generation_box, widgets.HTML("<hr>"), self.file_box, widgets.HTML("<hr>"), self.facts],
            layout=widgets.Layout(width="330px", min_width="330px", padding="0 12px 0 0"),
        )
        main = widgets.VBox([self.message, self.explorer], layout=widgets.Layout(flex="1", overflow="auto"))
        self.children = [widgets.HTML(_STYLE), widgets.HBox([sidebar, main])]
        if trace is not None:
            self.show_trace(trace, "", source="given trace")

    # --- controls
    def _build_controls(self, prompt: str) -> None:
        has_chat = bool(self.lm is not None and self.lm.has_chat_template)
        self.prompt = widgets.Textarea(value=prompt, placeholder="Type a prompt", rows=4,
                                       layout=widgets.Layout(width="100%")).add_class("ae-prompt")
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
        self.generate_button.on_click(lambda _: self.generate())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="100%"))
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
        self.upload = widgets.FileUpload(accept=".trace", multiple=False, description="Load trace")
        self.upload.add_class("ae-upload")
        self.upload.observe(lambda _: self._load_uploaded(), "value")
        self.save_button = widgets.Button(description="Save trace", icon="save").add_class("ae-save")
        self.save_button.on_click(lambda _: self.save())
        self.export_button = widgets.Button(description="Export HTML", icon="download")
        self.export_button.add_class("ae-export")
        self.export_button.on_click(lambda _: self.export())
        self.links = widgets.HTML().add_class("ae-links")
        self.file_box = widgets.VBox([self.upload, widgets.HBox([self.save_button, self.export_button]), self.links])

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
    def generate(self) -> Trace | None:
        """Generate from the prompt box with the settings shown; errors go to the page."""
        if self.lm is None or self.generate_button.disabled:
            return None
        self.generate_button.disabled = True
        self._say("")
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
            # values too, so the attention-math view can show the weighted sum of values
            trace = self.lm.generate(self.prompt.value, progress=False, on_token=on_token, on_status=on_status,
                                     keep_values=True, **settings)
            seconds = time.perf_counter() - started
            self.runs += 1
            self.show_trace(trace, f"Generated {trace.n_generated} tokens in {seconds:.1f} s (run {self.runs}).")
            self.progress.value = self.progress.max  # done, also when an end-of-text token stopped it early
            self.progress_label.value = f"{trace.n_generated} tokens, {seconds:.1f} s"
            return trace
        except ExplorerError as e:
            self._say(str(e), error=True)
            self.progress_label.value = ""
        except Exception as e:  # keep the kernel and the page alive whatever happens
            self._say(f"Generation failed: {type(e).__name__}: {e}", error=True)
        finally:
            self.generate_button.disabled = False
        return None

    def show_trace(self, trace: Trace, note: str, source: str = "generated here") -> None:
        """Draw `trace` in every view (replacing the previous one) and say what happened and whose it is."""
        self.explorer.set_trace(trace)
        self.trace = trace  # only once it is drawn: Save and Export must never get a trace the page could not show
        self.links.value = ""
        self.facts.value = _facts_html(trace.model, source)
        gc.collect()  # the old trace's arrays go now, not at some later collection
        self._say(note)

    def _load_uploaded(self) -> None:
        if not self.upload.value:
            return
        item = self.upload.value[0]
        self.upload.value = ()
        size = len(item["content"])
        if size > self.limits.upload_bytes:
            self._say(f"{item['name']} is {_size(size)}; this dashboard takes trace files up to "
                      f"{_size(self.limits.upload_bytes)}", error=True)
            return
        try:
            trace = trace_from_bytes(bytes(item["content"]), "the file")
            self.show_trace(trace, f"Loaded {item['name']}: {trace.n_tokens} tokens.", source=f"file {item['name']}")
        except ExplorerError as e:
            self._say(f"{item['name']}: {e}", error=True)
        except Exception as e:  # a file from anyone: whatever it breaks, the page says so and keeps its trace
            self._say(f"{item['name']} could not be shown: {type(e).__name__}: {e}", error=True)

    def save(self) -> Path | None:
        """Save the current trace next to the notebook and offer it as a download; in a class, where many
        students share the server's disk, only offer the download."""
        if self.trace is None:
            self._say("There is no trace to save yet.", error=True)
            return None
        name = time.strftime("trace-%Y%m%d-%H%M%S.trace")
        if self.limits.class_size:
            data = self.trace.to_bytes()
            self.links.value = _download_link(data, name, "application/octet-stream", f"download {name}")
            self._say(f"Your trace is ready to download ({_size(len(data))}).")
            return None
        path = Path.cwd() / name
        try:
            self.trace.save(path)
        except OSError as e:
            self._say(f"Could not save the trace: {e}", error=True)
            return None
        link = ""
        if path.stat().st_size <= DOWNLOAD_LIMIT:
            link = _download_link(path.read_bytes(), path.name, "application/octet-stream", f"download {path.name}")
        self.links.value = link
        self._say(f"Saved {path}.")
        return path

    def export(self) -> None:
        """Offer the current trace as a standalone HTML page (heatmap + stepper) that opens offline."""
        from ..views.export import standalone_html

        if self.trace is None:
            self._say("There is no trace to export yet.", error=True)
            return
        sel = self.explorer.selection
        try:
            with tempfile.TemporaryDirectory() as tmp:
                page = Path(tmp) / "explorer.html"
                standalone_html(self.trace, page, layer=sel.layer, head=sel.head)
                data = page.read_bytes()
        except Exception as e:  # an export that fails must not take the page down
            self._say(f"Export failed: {type(e).__name__}: {e}", error=True)
            return
        links = [_download_link(data, "attention-explorer.html", "text/html", "standalone HTML")]
        self.links.value = " · ".join(links)
        self._say("Export ready: the HTML page opens offline in any browser.")

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
            self.show_trace(trace, "Ready: type a prompt and press Generate.", source="the generation service")
            return
        self._say("The model is loading: you can type a prompt already.")
        self.progress_label.value = "loading the model …"
        threading.Thread(target=self._wait_for_first_trace, name="first trace", daemon=True).start()

    def _wait_for_first_trace(self, give_up: float = 600) -> None:
        from ..service.client import RemoteModel

        lm = RemoteModel(self.lm.address, self.lm.key)  # a socket of its own: Generate may use the other meanwhile
        deadline = time.monotonic() + give_up
        try:
            while time.monotonic() < deadline:
                try:
                    status = lm.status(timeout=3)
                except ExplorerError as e:
                    self.progress_label.value = f"waiting for the generation service … ({e})"
                    time.sleep(1)  # an answer that is an error comes at once: do not ask again at once
                    continue
                if status.state == "failed":
                    self._say(f"The model could not be loaded: {status.error}", error=True)
                    return
                if not status.ready:
                    if self.trace is None and not self.generate_button.disabled:
                        self.progress.max, self.progress.value = 100, status.percent
                        self.progress_label.value = f"loading the model … {status.percent}% ({status.stage})"
                    time.sleep(0.5)
                    continue
                self.lm.facts = lm.facts
                self._refresh_chat()
                trace = lm.first_trace()
                if self.trace is None and trace is not None and not self.generate_button.disabled:
                    self.progress_label.value = ""
                    self.show_trace(trace, "Ready: type a prompt and press Generate.",
                                    source="the generation service")
                return
            self._say(f"The generation service was not ready after {give_up:.0f} s: press Generate to try.", error=True)
        except Exception as e:  # a background thread has no one else to tell
            self._say(f"Could not get the first trace: {type(e).__name__}: {e}", error=True)
        finally:
            lm.close()

    def _refresh_chat(self) -> None:
        """Offer the chat template once the model's facts are known; a box the student could already use
        (it was enabled) keeps the student's choice."""
        if self.chat.disabled:
            self.chat.value = self.lm.has_chat_template
            self.chat.disabled = not self.lm.has_chat_template

    def when_shown(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the page has drawn the dashboard (the first view of a trace takes the browser
        about 1.5 s to build: the prompt box comes first)."""
        self.children = [*self.children, PageReady(callback)]

    @classmethod
    def from_environment(cls) -> Dashboard:
        """What `attention-explorer dashboard` starts: a saved trace ($ATTENTION_EXPLORER_TRACE) with no model;
        the generation service at $ATTENTION_EXPLORER_SERVICE (the viewer kernel holds no model); or, run as a
        plain notebook, a model ($ATTENTION_EXPLORER_MODEL, default the embedded one) and a first trace."""
        limits = Limits.from_json(os.environ.get(LIMITS_ENV))
        trace_path = os.environ.get("ATTENTION_EXPLORER_TRACE")
        if os.environ.get(SERVICE_ENV) and not trace_path:
            from ..service.client import RemoteModel

            lm = RemoteModel(os.environ[SERVICE_ENV], os.environ.get(KEY_ENV, ""))
            try:  # now, while Voilà preheats the kernel, not when a student comes; it also tells the model's facts
                first = lm.first_trace(timeout=2)
            except ExplorerError:
                first = None
            board = cls(lm=lm, limits=limits)
            board._say("Opening the first trace …")
            _import_views()
            board.when_shown(lambda: board.open_first_trace(first))
            return board
        if trace_path:
            board = cls(lm=None, limits=limits)

            def show() -> None:
                try:
                    board.show_trace(load_trace(trace_path), f"Loaded {trace_path}.",
                                     source=f"file {Path(trace_path).name}")
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
