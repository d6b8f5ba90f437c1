"""A class on one dashboard, as students meet it in Chromium: the real command, its printed address and token,
pages that see only their own traces, class limits, a closed tab, and the generation service killed mid-request."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dashboard_harness import (fill, generate, printed, start_dashboard, stop, wait_error, wait_generated, wait_message,
                               wait_stepper)
from explorer.service import protocol as p
from voila_harness import OUTPUT, browser, offline_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def children(pid: int) -> dict[int, str]:
    """pid -> command line of every child process of `pid`."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


def kernels(pid: int) -> set[int]:
    return {k for k, cmd in children(pid).items() if "ipykernel" in cmd}


def service_pid(pid: int) -> int:
    (found,) = [k for k, cmd in children(pid).items() if "explorer.cli serve" in cmd]
    return found


def until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.fixture(scope="module")
def classroom():
    """`attention-explorer dashboard --class 3`: (process, address printed with its token, the teacher's address)."""
    proc, url, _ = start_dashboard("--class", "3")
    try:
        match = re.search(r"for a class of 3: http://\S+:(\d+)/\?token=(\S+)", printed(url))
        teacher = re.search(r"the teacher's address .*: http://\S+:(\d+)/\?token=(\S+)&teacher=(\S+)", printed(url))
        assert match and teacher and teacher[2] == match[2], printed(url)
        address = f"http://127.0.0.1:{match[1]}/?token={match[2]}"
        yield proc, address, f"{address}&teacher={teacher[3]}"
    finally:
        stop(proc)


def test_a_class_server_listens_beyond_this_machine_only_with_a_token(classroom):
    proc, address, _ = classroom
    bare = address.split("?")[0]

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    before = kernels(proc.pid)
    for guess in (bare, bare + "?token=guess"):  # sent to the login form, and no kernel is started for them
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(guess, timeout=30)
        assert refused.value.code == 302 and refused.value.headers["Location"].startswith("/login")
    assert kernels(proc.pid) <= before
    # and it does listen on every address, not only loopback: the students' laptops reach it
    port = int(bare.rstrip("/").rsplit(":", 1)[1])
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:] if line.split()[3] == "0A"]
    assert f"00000000:{port:04X}" in listening


def test_two_students_each_see_only_their_own_trace_from_thin_kernels(classroom):
    proc, address, _ = classroom
    with browser() as b:
        (alice, alice_log), (bob, bob_log) = offline_page(b), offline_page(b)
        opened = time.monotonic()
        alice.goto(address, timeout=120_000)
        bob.goto(address, timeout=120_000)
        alice.wait_for_selector(".ae-prompt textarea", timeout=60_000)
        bob.wait_for_selector(".ae-prompt textarea", timeout=60_000)
        prompt_box = time.monotonic() - opened
        for page in (alice, bob):
            wait_message(page, "Ready: type a prompt")
            assert "at most 32 new tokens" in page.locator(".ae-dashboard").inner_text()
        generate(alice, "Bananas are yellow and", 6)
        generate(bob, "Volcanoes erupt when", 6)
        for page, own, other in [(alice, "Bananas", "Volcanoes"), (bob, "Volcanoes", "Bananas")]:
            wait_generated(page, 6)
            wait_stepper(page, own)
            assert other not in page.locator(".ae-dashboard").inner_text()
            assert page.locator(".ae-live").inner_text()  # the tokens were shown as they came
        alice.screenshot(path=str(OUTPUT / "class-alice.png"), full_page=True)

        # class limits, with a message, and the trace stays
        fill(alice, "ae-max-new-tokens", "200")
        alice.locator(".ae-generate").click()
        wait_error(alice, "this class allows at most 32 new tokens")
        wait_stepper(alice, "Bananas")

        # a class of 3 runs at most 3 kernels and 2 spares: Voilà's pool stops refilling there
        assert len(kernels(proc.pid)) <= 5, kernels(proc.pid)

        # the viewer kernels hold no torch: none has libtorch mapped, the service alone has
        for pid in kernels(proc.pid):
            assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text(), f"kernel {pid} loaded torch"
        assert "libtorch" in Path(f"/proc/{service_pid(proc.pid)}/maps").read_text()

        # the kernels talk to the service encrypted, with nothing set up: they hold its public key, never its secret
        assert "encrypted (CURVE)" in printed(address.split("?")[0])
        for pid in kernels(proc.pid):
            names = {e.split(b"=", 1)[0] for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")}
            assert p.PUBLIC_KEY_ENV.encode() in names and p.SECRET_KEY_ENV.encode() not in names, pid

        # a closed tab frees its kernel (Voilà's page-unload shutdown)
        before = kernels(proc.pid)
        bob.close(run_before_unload=True)
        until(lambda: len(kernels(proc.pid) - before) == 0 and len(kernels(proc.pid)) < len(before), 30,
              "the closed page's kernel is still running")
        for log in (alice_log, bob_log):
            assert log.page_errors == [] and log.our_blocked() == [], (log.page_errors, log.our_blocked())
            assert log.requests and log.outside() == [], log.outside()  # Font Awesome included: a class may be offline
    assert prompt_box < 60  # a generous bound: the benchmark measures it, this only checks it came


def session_list(page) -> list[str]:
    return [o.replace("\xa0", " ") for o in page.locator(".ae-session-list select option").all_inner_texts()]


def test_the_teacher_shows_a_trace_that_every_student_gets_and_nothing_of_a_student_reaches_another(classroom):
    proc, address, teacher_address = classroom
    with browser() as b:
        (teacher, teacher_log), (ann, ann_log), (ben, ben_log) = offline_page(b), offline_page(b), offline_page(b)
        for page, url in ((teacher, teacher_address), (ann, address), (ben, address)):
            page.goto(url, timeout=120_000)
        for page in (teacher, ann, ben):
            wait_message(page, "Ready: type a prompt")
        teacher.locator(".ae-show-class").wait_for(state="visible", timeout=60_000)  # the teacher's key, checked
        for page, prompt in ((teacher, "Penguins live in"), (ann, "Rivers flow into"), (ben, "Mountains are")):
            generate(page, prompt, 4)
        for page, own in ((teacher, "Penguins"), (ann, "Rivers"), (ben, "Mountains")):
            wait_generated(page, 4)
            wait_stepper(page, own)
        for student in (ann, ben):  # no button for students, whatever they do
            assert student.locator(".ae-show-class").count() == 0 or not student.locator(".ae-show-class").is_visible()

        teacher.locator(".ae-show-class").click()
        wait_message(teacher, "Shown to the class")
        for student, own, other in ((ann, "Rivers", "Mountains"), (ben, "Mountains", "Rivers")):
            student.wait_for_function(  # no reload: it comes through the student's kernel
                "() => [...document.querySelectorAll('.ae-session-list select option')]"
                ".some(o => /teacher · Penguins live in/.test(o.innerText.replace(/\\u00a0/g, ' ')))",
                timeout=60_000)
            wait_message(student, "The teacher showed the class")
            listed = session_list(student)
            assert any(own in o for o in listed) and not any(other in o for o in listed), listed
            wait_stepper(student, own)  # the student's own trace stays on screen
            student.locator(".ae-session-list select").select_option(
                label=next(o for o in student.locator(".ae-session-list select option").all_inner_texts()
                           if "teacher" in o))
            wait_stepper(student, "Penguins")  # explored in the student's own views
            assert other not in student.locator(".ae-dashboard").inner_text()
        listed = session_list(teacher)
        assert not any("Rivers" in o or "Mountains" in o for o in listed), listed
        ann.screenshot(path=str(OUTPUT / "class-from-the-teacher.png"), full_page=True)
        teacher.screenshot(path=str(OUTPUT / "class-teacher.png"), full_page=True)
        for log in (teacher_log, ann_log, ben_log):
            assert log.page_errors == [] and log.outside() == [], (log.page_errors, log.outside())


def test_the_service_killed_mid_request_is_reported_restarted_and_the_next_generate_works():
    proc, url, _ = start_dashboard()
    try:
        with browser() as b:
            page, log = offline_page(b)
            page.goto(url, timeout=120_000)
            wait_message(page, "Ready: type a prompt")
            generate(page, "Write a long story about a dragon", 400)
            page.wait_for_function(  # mid-request: tokens are coming
                "() => /^\\d+ \\/ 400 tokens/.test(document.querySelector('.ae-progress-label')?.innerText || '')",
                timeout=60_000)
            first = service_pid(proc.pid)
            os.kill(first, signal.SIGKILL)
            wait_error(page, "generation service stopped answering")
            wait_stepper(page, "step 0 of")  # the first trace is still on screen
            until(lambda: service_pid(proc.pid) != first, 30, "the service was not restarted")
            generate(page, "The cat sat on the", 5)
            wait_generated(page, 5, timeout=120_000)
            wait_stepper(page, "cat")
            page.screenshot(path=str(OUTPUT / "class-after-restart.png"), full_page=True)
            assert log.page_errors == []
    finally:
        stop(proc)
