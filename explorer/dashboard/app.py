"""The dashboard: a prompt box and generation settings over the full explorer, with save, load and export.

It runs the same in JupyterLab and under Voilà. Every callback catches our errors and shows them in the page:
the kernel keeps running and what is already drawn stays.
"""

from __future__ import annotations

import base64
import gc
import html
import os
import tempfile
import time
from pathlib import Path

import ipywidgets as widgets

from ..errors import ExplorerError, SettingsError
from ..trace import Trace
from ..trace_file import load_trace
from ..views.explorer_view import ExplorerView

DEFAULT_PROMPT = "What is the capital of France?"
DOWNLOAD_LIMIT = 64_000_000  # bytes; larger files are saved on the server only

_STYLE = """<style>
.ae-error { color: #b00020; background: #fdecea; padding: 6px 10px; border-radius: 4px; }
.ae-info { color: #1b5e20; background: #edf7ed; padding: 6px 10px; border-radius: 4px; }
.ae-facts { font-size: 12px; line-height: 1.5; }
.ae-facts b { display: inline-block; min-width: 86px; }
</style>"""


def _facts_html(info: dict, source: str) -> str:
    heads = info.get("heads")
    kv = info.get("kv_heads")
    params = info.get("parameters")
    rows = [
        ("model", info.get("name")),
        ("source", source),
        ("parameters", f"{params / 1e6:.1f} M" if params else "?"),
        ("layers", info.get("layers")),
        ("heads", f"{heads} query / {kv} key-value" if kv and kv != heads else heads),
        ("positions", info.get("positional")),
        ("context", info.get("context_length")),
        ("device", info.get("device")),
        ("dtype", info.get("dtype")),
    ]
    body = "<br>".join(f"<b>{html.escape(k)}</b>{html.escape(str(v))}" for k, v in rows)
    return f"<div class='ae-facts'>{body}</div>"


def _download_link(data: bytes, filename: str, mime: str, label: str) -> str:
    encoded = base64.b64encode(data).decode()
    return (f"<a download='{html.escape(filename)}' href='data:{mime};base64,{encoded}' "
            f"class='ae-download'>{html.escape(label)}</a>")


class Dashboard(widgets.VBox):
    """Prompt, settings and Generate on the left; the explorer of the current trace on the right."""

    def __init__(self, lm=None, trace: Trace | None = None, prompt: str = DEFAULT_PROMPT):
        super().__init__()
        self.add_class("ae-dashboard")
        self.lm = lm
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
        self.max_new_tokens = widgets.IntText(value=20, description="new tokens").add_class("ae-max-new-tokens")
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
        self.generation_box = widgets.VBox([
            self.prompt, self.chat, self.max_new_tokens, self.mode, self.sampling,
            self.generate_button, self.progress, self.progress_label,
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

            def on_token(done: int, total: int) -> None:
                self.progress.value = done
                self.progress_label.value = f"{done} / {total} tokens"

            started = time.perf_counter()
            # values too, so the attention-math view can show the weighted sum of values
            trace = self.lm.generate(self.prompt.value, progress=False, on_token=on_token, keep_values=True,
                                     **settings)
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
        self.trace = trace
        self.explorer.set_trace(trace)
        self.links.value = ""
        self.facts.value = _facts_html(trace.model, source)
        gc.collect()  # the old trace's arrays go now, not at some later collection
        self._say(note)

    def _load_uploaded(self) -> None:
        if not self.upload.value:
            return
        item = self.upload.value[0]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "upload.trace"
            path.write_bytes(bytes(item["content"]))
            try:
                trace = load_trace(path)
            except ExplorerError as e:
                self._say(f"{item['name']}: {str(e).replace(str(path), 'the file')}", error=True)
                return
            finally:
                self.upload.value = ()
        self.show_trace(trace, f"Loaded {item['name']}: {trace.n_tokens} tokens.", source=f"file {item['name']}")

    def save(self) -> Path | None:
        """Save the current trace next to the notebook and offer it as a download."""
        if self.trace is None:
            self._say("There is no trace to save yet.", error=True)
            return None
        path = Path.cwd() / time.strftime("trace-%Y%m%d-%H%M%S.trace")
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

    @classmethod
    def from_environment(cls) -> Dashboard:
        """What `attention-explorer dashboard` starts: a saved trace ($ATTENTION_EXPLORER_TRACE) with no model,
        or a model ($ATTENTION_EXPLORER_MODEL, default the embedded one) and a first trace of a short prompt."""
        trace_path = os.environ.get("ATTENTION_EXPLORER_TRACE")
        if trace_path:
            board = cls(lm=None)
            try:
                board.show_trace(load_trace(trace_path), f"Loaded {trace_path}.", source=f"file {Path(trace_path).name}")
            except ExplorerError as e:
                board._say(str(e), error=True)
            return board
        from ..models import load_model

        lm = load_model(os.environ.get("ATTENTION_EXPLORER_MODEL") or None, progress=False)
        board = cls(lm=lm)
        board.generate()
        return board
