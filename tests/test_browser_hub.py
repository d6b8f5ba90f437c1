"""A class on a real JupyterHub (hub/jupyterhub_config.py, with the test-only login of hub/on_this_machine.py): two
students log in through the hub's own page, get their own single-user servers showing the dashboard through Voilà,
and each generates from one shared generation service (a tiny random model, encrypted) and sees only their own
trace, equal to the trace the same model gives here. Nothing any page asks for leaves this machine."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest
from dashboard_harness import generate, wait_generated, wait_message
from hub_harness import DASHBOARD_PAGE, ProxyMissing, find_proxy, log_in, process_tree, running_hub
from test_service import service_in_this_process
from voila_harness import OUTPUT, TRACEBACK, browser, offline_page

from explorer.service import GenerationRequest
from explorer.service import protocol as p
from explorer.service.keys import KeyPair

pytestmark = pytest.mark.browser

KEY = "hub-class-key"
PROMPTS = {"alice": "Bananas are yellow and", "bob": "Volcanoes erupt when"}
NEW_TOKENS = 6
# the main text of the step-through view: one span a token, every token of the trace (later steps' hidden)
SHOWN_TOKENS = ("() => [...(document.querySelector('.stepper-view .token-text')?.querySelectorAll('span[data-index]')"
                " || [])].map((s) => s.textContent)")


@pytest.fixture(scope="module")
def hub():
    """One generation service (a tiny Llama, in this process, encrypted with its own key pair) and one hub whose
    students' kernels are given its address and keys, as a department's hub is: (Hub, a copy of the model)."""
    from conftest import make_tiny_lm

    require_proxy()
    lm = make_tiny_lm("llama")

    def load(service):  # as the service loads a model: then the first trace every page opens on
        service.lm = lm
        service.status.model = lm.info().to_dict()
        first = GenerationRequest(p.FIRST_PROMPT, p.FIRST_NEW_TOKENS, chat=False)
        service.first_trace = service._run([first], lambda *_: None)[0].to_bytes()
        service._stage(100, "ready")
        service.status.state = "ready"

    pair = KeyPair.new()
    with service_in_this_process(load, key=KEY, secret_key=pair.secret) as (address, _), \
            running_hub({p.SERVICE_ENV: address, p.KEY_ENV: KEY, p.PUBLIC_KEY_ENV: pair.public}) as running:
        yield running, make_tiny_lm("llama")  # the same weights (the same seed), for traces made here


def require_proxy() -> None:
    """Skip outside CI when JupyterHub's proxy is missing (`make install` installs it); in CI that is a failure."""
    try:
        find_proxy()
    except ProxyMissing as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def kernels(server: int) -> set[int]:
    return {pid for pid, (cmd, _) in process_tree(server).items() if "ipykernel" in cmd}


def test_students_log_in_through_the_hub_and_each_sees_only_their_own_trace(hub):
    hub, lm = hub
    with browser() as b:
        pages = {name: offline_page(b) for name in PROMPTS}
        for name, (page, _) in pages.items():
            log_in(page, hub, name)
        for name, (page, log) in pages.items():  # the hub starts their server and sends them to the dashboard
            page.wait_for_selector(f".ae-prompt textarea, {TRACEBACK}", timeout=180_000)
            assert page.locator(TRACEBACK).count() == 0, page.locator(TRACEBACK).all_inner_texts()
            assert page.url == f"{hub.url}/user/{name}/{DASHBOARD_PAGE}"
            wait_message(page, "Ready: type a prompt")
            assert "at most 32 new tokens" in page.locator(".ae-dashboard").inner_text()  # the class's limits
        for name, (page, _) in pages.items():
            generate(page, PROMPTS[name], NEW_TOKENS)
        for name, (page, log) in pages.items():
            wait_generated(page, NEW_TOKENS)
            here = lm.generate(PROMPTS[name], max_new_tokens=NEW_TOKENS, progress=False)
            shown = page.evaluate(SHOWN_TOKENS)
            assert shown == here.tokens, (name, shown, here.tokens)  # their own prompt's trace, token for token
            # the session list names their own prompt, never the other student's (the byte tokenizer shows the
            # text of a prompt shifted, so the words are read there)
            page_text = page.locator(".ae-dashboard").inner_text()
            other = next(prompt for who, prompt in PROMPTS.items() if who != name)
            assert PROMPTS[name] in page_text and other.split()[0] not in page_text
        pages["alice"][0].screenshot(path=str(OUTPUT / "hub-alice.png"), full_page=True)
        # bertviz draws in a sandboxed iframe: the single-user server's CSP (frame-ancestors 'none') lets it
        alice = pages["alice"][0]
        alice.locator(".lm-TabBar-tab", has_text="bertviz").first.click()
        alice.frame_locator("iframe[sandbox] >> nth=0").locator("svg text").first.wait_for(timeout=60_000)

        # each student has a server of their own, with a kernel of their own that holds no torch and no secret key
        servers = hub.servers()
        assert set(servers) == set(PROMPTS) and len(set(servers.values())) == len(PROMPTS), servers
        for name, server in servers.items():
            assert Path(f"/proc/{server}/cwd").resolve() == (hub.state / "homes" / name).resolve()
            (kernel,) = kernels(server)
            assert "libtorch" not in Path(f"/proc/{kernel}/maps").read_text(), f"{name}'s kernel loaded torch"
            names = {e.split(b"=", 1)[0] for e in Path(f"/proc/{kernel}/environ").read_bytes().split(b"\0")}
            assert p.PUBLIC_KEY_ENV.encode() in names and p.SECRET_KEY_ENV.encode() not in names

        # a student's login opens none of another's pages: the hub refuses alice at bob's dashboard
        response = alice.goto(f"{hub.url}/user/bob/{DASHBOARD_PAGE}")
        assert response.status == 403 and "Volcanoes" not in alice.content()

        for name, (page, log) in pages.items():
            assert log.page_errors == [] and log.dialogs == [], (name, log.page_errors, log.dialogs)
            assert log.requests and log.outside() == [], (name, log.outside())  # a class may be offline

        # a closed tab frees its kernel (Voilà's page-unload shutdown, through the hub's proxy and login)
        bob_server = servers["bob"]
        pages["bob"][0].close(run_before_unload=True)
        deadline = time.monotonic() + 30
        while kernels(bob_server):  # waits for the state, polling the process table
            assert time.monotonic() < deadline, "bob's closed page kept its kernel"
            time.sleep(0.2)


def test_the_hub_answers_only_through_its_login(hub):
    hub, _ = hub
    with urllib.request.urlopen(f"{hub.url}/user/alice/{DASHBOARD_PAGE}", timeout=30) as r:  # no login: the form
        assert "/hub/login" in r.url and r.status == 200
