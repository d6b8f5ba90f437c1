"""The dashboard's files: Load trace (one trace, or a tree of them: a saved session), Save trace, Save session and
Export HTML, with the download links they offer. A class gets downloads only: many students share the server's disk.
"""

from __future__ import annotations

import base64
import html
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets

from ..errors import ExplorerError
from ..trace import save_traces, traces_to_bytes
from ..trace_file import traces_from_bytes

DOWNLOAD_LIMIT = 64_000_000  # bytes; larger files are saved on the server only


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _download_link(data: bytes, filename: str, mime: str, label: str) -> str:
    encoded = base64.b64encode(data).decode()
    return (f"<a download='{html.escape(filename)}' href='data:{mime};base64,{encoded}' "
            f"class='ae-download'>{html.escape(label)}</a>")


class FilesPanel(widgets.VBox):
    """Load trace, Save trace, Save session, Export HTML and their links, for `board` (a Dashboard: its trace,
    session, limits and message line)."""

    def __init__(self, board):
        super().__init__()
        self.board = board
        self.upload = widgets.FileUpload(accept=".trace", multiple=False, description="Load trace")
        self.upload.add_class("ae-upload")
        self.upload.observe(lambda _: self._load_uploaded(), "value")
        self.save_button = widgets.Button(description="Save trace", icon="save").add_class("ae-save")
        self.save_button.on_click(lambda _: self.save())
        self.save_session_button = widgets.Button(description="Save session", icon="save",
                                                  tooltip="every trace of the session in one file")
        self.save_session_button.add_class("ae-save-session")
        self.save_session_button.on_click(lambda _: self.save_session())
        self.export_button = widgets.Button(description="Export HTML", icon="download")
        self.export_button.add_class("ae-export")
        self.export_button.on_click(lambda _: self.export())
        self.links = widgets.HTML().add_class("ae-links")
        self.children = [self.upload, widgets.HBox([self.save_button, self.save_session_button]),
                         self.export_button, self.links]

    def _say(self, text: str, error: bool = False) -> None:
        self.board._say(text, error=error)

    def _load_uploaded(self) -> None:
        """Show the file chosen with Load trace: one trace, or the traces of a tree file (all join the session)."""
        if not self.upload.value:
            return
        item = self.upload.value[0]
        self.upload.value = ()
        size = len(item["content"])
        if size > self.board.limits.upload_bytes:
            self._say(f"{item['name']} is {_size(size)}; this dashboard takes trace files up to "
                      f"{_size(self.board.limits.upload_bytes)}", error=True)
            return
        name = item["name"]
        try:
            traces = traces_from_bytes(bytes(item["content"]), "the file")
            if len(traces) == 1:
                self.board.show_trace(traces[0], f"Loaded {name}: {traces[0].n_tokens} tokens.",
                                      source=f"file {name}", origin=name)
            else:
                kept = min(len(traces), self.board.session.max_traces)
                more = f" (the first {kept}: the session keeps {kept})" if kept < len(traces) else ""
                self.board.show_traces(traces, f"Loaded {name}: {len(traces)} traces{more}, shown as a tree; "
                                               f"this is the first.", source=f"file {name}", origin=name)
        except ExplorerError as e:
            self._say(f"{item['name']}: {e}", error=True)
        except Exception as e:  # a file from anyone: whatever it breaks, the page says so and keeps its trace
            self._say(f"{item['name']} could not be shown: {type(e).__name__}: {e}", error=True)

    def save(self) -> Path | None:
        """Save the current trace next to the notebook and offer it as a download; in a class, where many
        students share the server's disk, only offer the download."""
        trace = self.board.trace
        if trace is None:
            self._say("There is no trace to save yet.", error=True)
            return None
        return self._save("trace", "Your trace", "", trace.to_bytes, trace.save)

    def save_session(self) -> Path | None:
        """Save every trace of the session as one file (a tree of branches; `explorer.load_traces` and Load
        trace read it back), next to the notebook and as a download; in a class, only as a download."""
        traces = self.board.session.traces
        if not traces:
            self._say("There is no trace in the session yet.", error=True)
            return None
        n = f"{len(traces)} trace{'s' * (len(traces) != 1)}"
        return self._save("session", f"Your session ({n})", f" ({n})", lambda: traces_to_bytes(traces),
                          lambda path: save_traces(traces, path))

    def _save(self, kind: str, what: str, count: str, to_bytes: Callable[[], bytes],
              to_file: Callable[[Path], None]) -> Path | None:
        """Offer `what` as a download (a class) or write it next to the notebook and offer it if not too big."""
        name = time.strftime(f"{kind}-%Y%m%d-%H%M%S.trace")
        if self.board.limits.class_size:
            data = to_bytes()
            self.links.value = _download_link(data, name, "application/octet-stream", f"download {name}")
            self._say(f"{what} is ready to download ({_size(len(data))}).")
            return None
        path = Path.cwd() / name
        try:
            to_file(path)
        except OSError as e:
            self._say(f"Could not save the {kind}: {e}", error=True)
            return None
        link = ""
        if path.stat().st_size <= DOWNLOAD_LIMIT:
            link = _download_link(path.read_bytes(), path.name, "application/octet-stream", f"download {path.name}")
        self.links.value = link
        self._say(f"Saved {path}{count}.")
        return path

    def export(self) -> None:
        """Offer the current trace as a standalone HTML page (heatmap + stepper) that opens offline."""
        from ..views.export import standalone_html

        trace = self.board.trace
        if trace is None:
            self._say("There is no trace to export yet.", error=True)
            return
        sel = self.board.explorer.selection
        try:
            with tempfile.TemporaryDirectory() as tmp:
                page = Path(tmp) / "explorer.html"
                standalone_html(trace, page, layer=sel.layer, head=sel.head)
                data = page.read_bytes()
        except Exception as e:  # an export that fails must not take the page down
            self._say(f"Export failed: {type(e).__name__}: {e}", error=True)
            return
        links = [_download_link(data, "attention-explorer.html", "text/html", "standalone HTML")]
        self.links.value = " · ".join(links)
        self._say("Export ready: the HTML page opens offline in any browser.")
