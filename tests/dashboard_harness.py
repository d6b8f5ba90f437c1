"""Driving the dashboard as a user does: started by the real command on a free port, then typed into, clicked and
read in the page (the browser and the offline page come from voila_harness)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from voila_harness import OUTPUT, free_port

CLI = str(Path(sys.executable).with_name("attention-explorer"))


def start_dashboard(*args: str, timeout: float = 180) -> tuple[subprocess.Popen, str, float]:
    """Run `attention-explorer dashboard ARGS` on a free port; return (process, url, seconds to serve).
    What it prints goes to tests/output/dashboard-PORT.log (see `printed`)."""
    port = free_port()
    OUTPUT.mkdir(exist_ok=True)
    log = open(OUTPUT / f"dashboard-{port}.log", "w")
    started = time.monotonic()
    proc = subprocess.Popen([CLI, "dashboard", "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited with {proc.returncode}: see {log.name}")
        try:
            urllib.request.urlopen(url + "voila/static/voila.js", timeout=2).close()
            return proc, url, time.monotonic() - started
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the dashboard did not start")


def printed(url: str) -> str:
    """What the dashboard serving `url` has printed so far."""
    return (OUTPUT / f"dashboard-{url.rstrip('/').rsplit(':', 1)[1]}.log").read_text()


def stop(proc: subprocess.Popen) -> None:
    """Stop a dashboard started by `start_dashboard`: terminate, then kill if it lingers."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def upload(page, path) -> None:
    """Choose a file with the Load trace button, as a user does."""
    with page.expect_file_chooser() as chooser:
        page.locator(".ae-upload").click()
    chooser.value.set_files(str(path))


def wait_error(page, pattern: str) -> str:
    """Wait until the page shows an error message matching `pattern`."""
    text = wait_message(page, pattern, timeout=60_000)
    assert page.locator(".ae-message .ae-error").count() == 1, text
    return text


def wait_generated(page, n_tokens: int, timeout: float = 120_000) -> str:
    """Wait until the dashboard says a generation of `n_tokens` is complete, its logit lens included (while the
    lens is read, the message says "...(run k); the logit lens is being read.")."""
    return wait_message(page, rf"Generated {n_tokens} tokens in [\d.]+ s \(run \d+\)\.", timeout=timeout)


def wait_message(page, pattern: str, timeout: float = 120_000) -> str:
    """Wait until the dashboard's message line matches `pattern` (a screenshot on failure); return its text."""
    try:
        page.wait_for_function(
            "p => new RegExp(p).test(document.querySelector('.ae-message')?.innerText || '')", arg=pattern,
            timeout=timeout,
        )
    except Exception:
        page.screenshot(path=str(OUTPUT / "dashboard-failure.png"), full_page=True)
        raise
    return page.locator(".ae-message").inner_text()


def fill(page, field: str, value: str) -> None:
    """Type into a dashboard field (by its class) and press Enter, as a user commits a number."""
    page.locator(f".{field} input").fill(value)
    page.locator(f".{field} input").press("Enter")


def generate(page, prompt: str, tokens: int) -> None:
    """Type `prompt`, chat template off, `tokens` new tokens, and press Generate."""
    page.locator(".ae-prompt textarea").fill(prompt)
    page.locator(".ae-dashboard input[type=checkbox]").first.uncheck()
    fill(page, "ae-max-new-tokens", str(tokens))
    page.locator(".ae-generate").click()


def wait_stepper(page, pattern: str, timeout: float = 120_000) -> None:
    """Wait until the step-through view shows text matching `pattern` (it is rebuilt on each new trace)."""
    page.wait_for_function(
        "p => new RegExp(p).test(document.querySelector('.stepper-view')?.innerText || '')", arg=pattern,
        timeout=timeout,
    )


def wait_step(page, step: int, timeout: float = 120_000) -> None:
    """Wait until the step-through view shows `step` whole: its line says so, its candidates are that step's
    (data-key) and no chip is still marked clicked (the kernel has taken the click that went there). The candidates
    come in a message of their own after the line: read on the line alone, they may still be the step before's,
    and a click on one lands on chips about to change."""
    page.wait_for_function(
        "s => { const v = document.querySelector('.stepper-view');"
        " return !!v && v.querySelector('.stepper-candidates')?.dataset.key === 'step ' + s"
        " && !v.querySelector('.chips span.selected, .candidates span.selected')"
        " && new RegExp('step ' + s + ' of ').test(v.innerText); }",
        arg=step, timeout=timeout,
    )
