"""benchmarks/bench_gpu.py keeps working where there is no GPU: its quick CPU run checks capture against transformers'
eager attention (six tiny families, float32 and bfloat16) and plain generate, and prints every step."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


def _bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_quick_cpu_run_matches_eager_and_prints_every_step(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        results = _bench_gpu().main(["--device", "cpu", "--quick", "--threads", "1", "--out", str(tmp_path / "b.json")])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    parity = [line for line in printed.splitlines() if line.startswith("  parity tiny ")]
    assert len(parity) == 6 * 2, printed  # six families, float32 and bfloat16
    for line in parity:  # the same ids as plain generate, and every head within the dtype's tolerance of eager
        assert line.endswith("   OK") and "ids = plain generate: yes" in line, line
    assert "parity: 12 of 12 OK" in printed and "NOT OK" not in printed
    float32 = [row for row in results["parity"] if row["dtype"] == "float32"]
    assert max(row["max_abs"] for row in float32) < 1e-5  # on a CPU, float32 capture is eager to the last bits
    for step in ("\n2. capture overhead", "\n3. a batch of 8 prompts", "\n4. peak"):
        assert step in printed
    assert "batch ids = plain batched generate: yes" in printed
    assert json.loads((tmp_path / "b.json").read_text())["parity"] == json.loads(json.dumps(results["parity"]))
    assert results["batch"]["throughput"]["ratio"] > 0 and len(results["overhead"]) == 2
