"""The command line as a user runs it: trace a prompt, read the table, open the saved file without a model."""

import subprocess
import sys
from pathlib import Path

import pytest

import explorer

CLI = [str(Path(sys.executable).with_name("attention-explorer"))]


def run(*args, check=True):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300, check=check)


@pytest.mark.slow
def test_trace_prints_every_token_and_saves_a_file_that_loads(tmp_path):
    out = run("trace", "The capital of France is", "--max-new-tokens", "6", "-o", str(tmp_path / "p.trace"))
    trace = explorer.load_trace(tmp_path / "p.trace")
    assert trace.n_generated == 6 and trace.prompt_text.startswith("The capital of France is")
    for step in trace.steps:  # each generated token's line shows its probability, rank and entropy
        assert f"{step.index + 1:>4}  {step.token!r}" in out.stdout
        assert f"{step.prob:.4f}" in out.stdout and f"{step.entropy:.3f}" in out.stdout
    assert "SmolLM2-135M-Instruct" in out.stdout and "on cpu" in out.stdout and "tok/s" in out.stdout
    shown = run("show", str(tmp_path / "p.trace"))
    assert f"{trace.steps[0].prob:.4f}" in shown.stdout


def test_errors_are_one_line_not_a_traceback(tmp_path):
    bad = run("trace", "", check=False)
    assert bad.returncode == 2 and "prompt is empty" in bad.stderr and "Traceback" not in bad.stderr
    bad = run("trace", "x", "--max-new-tokens", "0", check=False)
    assert bad.returncode == 2 and "max_new_tokens" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "x.trace").write_text("not a trace")
    bad = run("show", str(tmp_path / "x.trace"), check=False)
    assert bad.returncode == 2 and "not a readable attention-explorer trace" in bad.stderr
    bad = run("trace", "x", "--model", "no-such/model", check=False)
    assert bad.returncode == 2 and "could not load model 'no-such/model'" in bad.stderr


def test_the_dashboard_refuses_voilas_own_address_flag():
    """Voilà's --ip would bypass ours, and with it the token that listening beyond localhost needs."""
    out = run("dashboard", "--Voila.ip=0.0.0.0", check=False)
    assert out.returncode == 2 and "give the address with our --ip" in out.stderr


def test_serve_takes_the_batch_size_it_is_given_and_refuses_nonsense(monkeypatch, capsys):
    """`serve --batch-size N` reaches the service (a GPU takes more than the 2-core CPU's 8); 0 is refused."""
    import pytest

    from explorer import cli
    from explorer.service import server

    made = []
    monkeypatch.setattr(server.GenerationService, "run", lambda self: made.append(self))
    assert cli.main(["serve", "--bind", "tcp://127.0.0.1:0", "--batch-size", "32"]) == 0
    assert made[0].batch_size == 32 and "batches of up to 32 requests" in made[0]._describe_limits()
    assert cli.main(["serve", "--bind", "tcp://127.0.0.1:0", "--class", "3"]) == 0
    assert made[1].batch_size == server.BATCH_SIZE
    with pytest.raises(SystemExit):
        cli.main(["serve", "--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err
