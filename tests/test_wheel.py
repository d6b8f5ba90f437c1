"""The wheel works on its own: built from the sources, installed into a fresh virtual environment with no source
tree on the path, it runs lesson 1 in a Jupyter kernel and `attention-explorer trace` from a folder outside the repo.

The fresh environment borrows the project's installed dependencies (torch, transformers, Jupyter ...) through a
.pth file naming .venv's site-packages, which adds the folder to the path without running the .pth files inside
it: the editable install of explorer there stays switched off, and the tests check that explorer comes from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LESSON = REPO / "notebooks" / "01-self-attention.ipynb"
KERNEL = "attention-explorer-wheel-test"
CHECKPOINT = ["explorer/textbook/trained/textbook-copy.safetensors", "explorer/textbook/trained/textbook-copy.json"]


@dataclass(frozen=True)
class FreshVenv:
    """A virtual environment holding only the installed wheel, and a working folder outside the repo."""

    wheel: Path
    root: Path
    site_packages: Path
    workdir: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def env(self) -> dict[str, str]:
        """The environment of a user of this venv: its bin first, no PYTHONPATH, the hub offline."""
        env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
        env.update(PATH=f"{self.root / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1",
                   HF_HUB_OFFLINE="1", JUPYTER_PATH=str(self.root / "share" / "jupyter"))
        return env

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run([str(a) for a in args], cwd=self.workdir, env=self.env(), capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stderr}"
        return done


def _pip(*args: str | Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *map(str, args)], check=True,
                   timeout=180)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> FreshVenv:
    """Build the wheel from a copy of the sources (the shared checkout gets no build/), install it, add a kernel."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO / "explorer", source / "explorer", ignore=shutil.ignore_patterns("__pycache__", "*.trace"))
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(REPO / name, source / name)
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source)
    (wheel,) = (tmp / "dist").glob("attention_explorer-*.whl")

    root = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True, timeout=60)
    _pip("--python", root / "bin" / "python", "install", "--no-deps", "--no-index", wheel)
    site_packages = next((root / "lib").glob("python3*/site-packages"))
    # dependencies from the project's venv: a plain directory line, so its editable-install .pth does not run
    (site_packages / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    spec = root / "share" / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [str(root / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "wheel test", "language": "python"}))

    workdir = tmp / "work"
    workdir.mkdir()
    return FreshVenv(wheel, root, site_packages, workdir)


def test_the_wheel_carries_the_checkpoint_the_front_end_and_an_spdx_license(venv):
    with zipfile.ZipFile(venv.wheel) as wheel:
        names = set(wheel.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        headers = wheel.read(metadata).decode()
    assert set(CHECKPOINT) <= names
    # every view's .js and .css, in whichever folder of explorer/views it lives (package-data globs them)
    front_end = {p.relative_to(REPO).as_posix() for ext in ("js", "css") for p in (REPO / "explorer").rglob(f"*.{ext}")}
    assert front_end and front_end <= names, sorted(front_end - names)
    # the dashboard's Voilà template, and the server config of a student's server under JupyterHub
    jupyter = {p.relative_to(REPO).as_posix() for p in (REPO / "explorer" / "dashboard" / "jupyter").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert "explorer/dashboard/jupyter/config/jupyter_server_config.json" in jupyter and jupyter <= names, \
        sorted(jupyter - names)
    assert "License-Expression: MIT" in headers


def test_explorer_comes_from_the_wheel_not_the_checkout(venv):
    code = ("import sys, explorer\n"
            "from explorer.textbook.checkpoint import DEFAULT\n"
            "from explorer.textbook.train import default_output\n"
            "print(explorer.__file__, DEFAULT.is_file(), default_output(), any('editable' in m for m in sys.modules))")
    explorer_file, checkpoint_found, default_output, editable = venv.run(venv.python, "-c", code).stdout.split()
    assert Path(explorer_file).is_relative_to(venv.site_packages), explorer_file
    assert checkpoint_found == "True" and editable == "False"
    # retraining an installed package does not write into site-packages
    assert not Path(default_output).is_relative_to(venv.site_packages), default_output


def test_lesson_1_runs_in_a_kernel_of_the_fresh_venv(venv, monkeypatch):
    for key, value in venv.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbformat.read(LESSON, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import explorer\nprint(explorer.__file__)"))
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(venv.workdir)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    assert Path(nb.cells[-1].outputs[0]["text"].strip()).is_relative_to(venv.site_packages)


def test_trace_command_runs_from_the_fresh_venv(venv):
    out = venv.run(venv.root / "bin" / "attention-explorer", "trace", "Hello", "--max-new-tokens", "3").stdout
    assert "prompt   'Hello'" in out and "\ntext     'Hello" in out, out
