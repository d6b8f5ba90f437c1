"""Every lesson notebook runs headless from top to bottom, offline, without an error, within its time budget, and
prints what its text claims.

The budget is generous (120 s; each lesson takes well under a minute on an idle 2-core machine) so that a busy
shared machine does not make the suite flaky; the real times are printed and written to tests/output/.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("0[0-9]-*.ipynb"))
BUDGET_SECONDS = 120
OUTPUT = Path(__file__).parent / "output"
NUMBER = r"(-?\d+\.\d+)"
# what each lesson's printed lines must show for its text to be true (a backreference: the same figure twice)
CLAIMS = {
    "01-self-attention": [
        r"right copy\? True\n",
        r"by hand: +(\[[^\]]*\])\nthe trace: +\1\n",
        r"most attended position: (\d+) \| the digit to copy sits at position \1\n",
    ],
    "02-positional-encoding": [
        r"largest difference from the model's own table: (0\.0|\d\.\d+e-(0[5-9]|[1-9]\d))\n",
        rf"PE\(3\) · PE\(5\) = {NUMBER}\nPE\(10\) · PE\(12\) = \1\n",
        rf"\(distance 3\): score = {NUMBER}\n.*\(distance 3\): score = \1\n.*\(distance 3\): score = \1\n",
        r"the diagonal came from the rotation: True\n",
    ],
    "03-multi-head": [
        r"all heads +copy accuracy 1\.00\n",
    ],
    "04-generation": [
        r"computed here: (\d\.\d+), in the trace: \1\n",
        r"same seed, same text: True\n",
    ],
    "05-what-it-means": [
        r"the last layer's lens is the model's own probability: True\n",
        r"the parts add up to the logit: True\n",
        r"the writers matter most: True\n",
        r"heads with induction > 0\.3: [1-9]\d*\n",
        r"heads with previous_token > 0\.5: [1-9]\d*\n",
        r"makes the copy harder to predict: True\n",
        r"the branch keeps the prefix: True\n",
    ],
}


def printed(nb) -> str:
    """Everything the notebook's code cells printed, in order."""
    return "".join(o.text for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
                   if o.output_type == "stream" and o.name == "stdout")


def test_all_five_lessons_are_there():
    assert [p.stem for p in LESSONS] == [
        "01-self-attention", "02-positional-encoding", "03-multi-head", "04-generation", "05-what-it-means",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(path: Path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the kernel inherits it: the lessons never touch the network
    nb = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), (
        f"{path.name} is stored with outputs: clear them before committing"
    )
    client = NotebookClient(nb, kernel_name="python3", timeout=BUDGET_SECONDS,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    seconds = time.perf_counter() - started
    text = printed(nb)
    for claim in CLAIMS[path.stem]:
        assert re.search(claim, text), f"{path.name} does not print what it claims ({claim}):\n{text}"
    OUTPUT.mkdir(exist_ok=True)
    with open(OUTPUT / "lesson-times.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {path.name}  {seconds:.1f} s\n")
    with capsys.disabled():
        print(f"\n{path.name}: ran in {seconds:.1f} s (budget {BUDGET_SECONDS} s)")
    assert seconds < BUDGET_SECONDS, f"{path.name} took {seconds:.0f} s"
