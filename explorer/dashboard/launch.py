"""Starting the dashboard: Voilà serving notebooks/dashboard.ipynb, bound to this machine unless asked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import SettingsError
from ..trace_file import load_trace

NOTEBOOK = "dashboard.ipynb"


def notebook_path() -> Path:
    """The dashboard notebook: notebooks/ of a source checkout; for an installed wheel, which has no notebooks/,
    the same one-cell notebook written into the cache folder."""
    checkout = Path(__file__).resolve().parents[2] / "notebooks" / NOTEBOOK
    if checkout.is_file():
        return checkout
    import nbformat

    from ..models import cache_dir

    path = cache_dir() / NOTEBOOK
    path.parent.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("from explorer.dashboard import Dashboard\n\nDashboard.from_environment()")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def voila_arguments(port: int, ip: str, voila_args: list[str]) -> list[str]:
    """Voilà's command line: ours first, so that the user's own flags (theme, preheating ...) come last and win."""
    return [
        str(notebook_path()),
        f"--port={port}",
        f"--Voila.ip={ip}",
        "--Voila.port_retries=0",
        "--no-browser",
        "--VoilaConfiguration.file_allowlist=[]",  # serve no files of the folder, only the dashboard
        *voila_args,
    ]


def launch(model: str | None, trace: Path | None, port: int, ip: str, voila_args: list[str]) -> int:
    """Serve the dashboard and print its address; the kernels read the model or trace from the environment."""
    if model and trace:
        raise SettingsError("give --model or --trace, not both: a saved trace needs no model")
    if trace is not None:
        load_trace(trace)  # refuse a bad file now, with our error, rather than in the page
        os.environ["ATTENTION_EXPLORER_TRACE"] = str(trace.resolve())
    if model:
        os.environ["ATTENTION_EXPLORER_MODEL"] = model
    from voila.app import main as voila_main

    print(f"attention-explorer dashboard: http://{ip}:{port}/  (Ctrl-C stops it)", flush=True)
    if ip not in {"127.0.0.1", "localhost", "::1"}:
        print(f"warning: listening on {ip}: anyone who reaches this port can run the model and save files here, "
              "with no password", file=sys.stderr, flush=True)
    sys.argv = ["voila", *voila_arguments(port, ip, voila_args)]
    voila_main()
    return 0
