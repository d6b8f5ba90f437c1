"""The generation service against independent references: its traces against the same model run in this process,
its queue against the order requests came in, its refusals, and a viewer kernel that never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq

from explorer.errors import CaptureError, ServiceError, SettingsError
from explorer.service import GenerationRequest, Limits, RemoteModel
from explorer.service import protocol as p
from explorer.service.keys import KeyPair
from explorer.service.server import FairQueue
from voila_harness import OUTPUT, free_port

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "dashboard.ipynb"
SERVE_KEYS = KeyPair.new()  # the CURVE key pair of the services `serve` runs here (it always encrypts)


@contextmanager
def running_service(*args: str, key: str = "k3y"):
    """`attention-explorer serve` on a free port, with the key pair SERVE_KEYS: yields (address, key, log path)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    OUTPUT.mkdir(exist_ok=True)
    log_path = OUTPUT / f"service-{address.rsplit(':', 1)[1]}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "explorer.cli", "serve", "--bind", address, *args],
                                env={**os.environ, p.KEY_ENV: key, p.SECRET_KEY_ENV: SERVE_KEYS.secret}, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        lm = remote_model(address, key)
        deadline = time.monotonic() + 180
        while not lm.status().ready:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        lm.close()
        yield address, key, log_path
    finally:
        proc.terminate()
        proc.wait(20)


def remote_model(address: str, key: str = "") -> RemoteModel:
    """A client of a service that `running_service` started (encrypted)."""
    return RemoteModel(address, key, server_key=SERVE_KEYS.public)


def encrypted_socket(address: str) -> zmq.Socket:
    """A bare ZeroMQ client of a service that `running_service` started, which skips RemoteModel's checks."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()
    socket.curve_serverkey = SERVE_KEYS.public.encode()
    socket.connect(address)
    return socket


@contextmanager
def service_in_this_process(load, key: str = "", **options):
    """A GenerationService on a free port in a thread of this process, its model loading replaced by `load(service)`
    (no torch needed) and no cached first trace: yields (address, service); stops it afterwards. `options` go to
    the service (limits, batch_size)."""
    from explorer.service.server import GenerationService

    class Service(GenerationService):
        def _load(self):
            load(self)

        def _read_first_trace(self):
            self.first_trace = None

    address = f"tcp://127.0.0.1:{free_port()}"
    service = Service(address, key=key, **options).start()
    try:
        yield address, service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def service():
    with running_service("--class", "3") as running:
        yield running


@pytest.mark.slow
def test_a_trace_from_the_service_equals_the_same_model_run_here(service, default_lm):
    address, key, _ = service
    remote = remote_model(address, key)
    tokens, statuses = [], []
    got = remote.generate("The cat sat on the", max_new_tokens=8, on_token=lambda d, t, text: tokens.append(text),
                          on_status=statuses.append)
    here = default_lm.generate("The cat sat on the", max_new_tokens=8, progress=False, keep_values=True)
    assert got.token_ids == here.token_ids and got.tokens == here.tokens
    assert "".join(tokens) == here.generated_text  # each token was reported as it came, in order
    for layer in (0, 29):
        np.testing.assert_allclose(got.attention(layer, 4), here.attention(layer, 4), atol=1e-5)
    assert [s.prob for s in got.steps] == pytest.approx([s.prob for s in here.steps], abs=1e-5)
    assert remote.info().name == "SmolLM2-135M-Instruct" and remote.has_chat_template
    sampled = remote.generate("Once", max_new_tokens=5, temperature=0.9, top_p=0.9, seed=7)
    assert sampled.token_ids == default_lm.generate("Once", 5, 0.9, None, 0.9, 7, progress=False).token_ids


@pytest.mark.slow
def test_branches_and_ablations_through_the_service_equal_the_same_model_run_here(service, default_lm):
    address, key, _ = service
    remote = remote_model(address, key)
    parent = remote.generate("The capital of France is", max_new_tokens=8, ablate=[(3, 1), (10, 4)])
    here = default_lm.generate("The capital of France is", max_new_tokens=8, ablate=[(3, 1), (10, 4)],
                               progress=False)
    assert parent.token_ids == here.token_ids and parent.settings["ablate"] == [[3, 1], [10, 4]]
    runner_up = parent.steps[2].top_k[1]
    branch = remote.branch(parent, 2, runner_up)
    expected = default_lm.branch(here, 2, runner_up.token_id, progress=False)
    assert branch.token_ids == expected.token_ids and branch.parent is parent and branch.branch_step == 2
    assert branch.steps[:2] == parent.steps[:2] and branch.steps[2].token_id == runner_up.token_id
    assert branch.settings["ablate"] == [[3, 1], [10, 4]] and branch.n_prompt == parent.n_prompt
    np.testing.assert_allclose(branch.lens.next_prob, expected.lens.next_prob, atol=1e-4)
    for bad, message in [({"token_ids": [1, "x"]}, "token_ids must be"), ({"prompt": "a", "forced": 3}, "forced"),
                         ({"prompt": "a", "ablate": [[1]]}, "ablate must be")]:
        with pytest.raises(SettingsError, match=message):
            p.GenerationRequest(**bad)
    with pytest.raises(SettingsError, match="not a head"):  # checked by the service against its model
        remote.generate("a", max_new_tokens=2, ablate=[(99, 0)])


@pytest.mark.slow
def test_the_service_refuses_what_a_class_may_not_ask_and_keeps_serving(service):
    address, key, _ = service
    remote = remote_model(address, key)
    with pytest.raises(SettingsError, match="at most 32 new tokens"):
        remote.generate("Hello", max_new_tokens=100)
    with pytest.raises(SettingsError, match="this class allows at most 256"):
        remote.generate("word " * 400, max_new_tokens=4)
    with pytest.raises(SettingsError, match="top_p must be in"):
        remote.generate("Hello", max_new_tokens=4, temperature=1.0, top_p=2.0)
    with pytest.raises(SettingsError, match="takes no model"):
        remote.generate("Hello", model="gpt2")
    # a client that skips our checks gets the service's own: no model name, no path, no other keyword
    raw = encrypted_socket(address)
    raw.send(b"\x80 not json")  # junk gets no answer and does not stop the service
    for request, expected in [({"prompt": "hi", "model": "/etc/passwd"}, "unknown request field"),
                              ({"prompt": "hi", "max_new_tokens": "9"}, "max_new_tokens must be a whole number"),
                              ({"prompt": 3}, "prompt must be text")]:
        raw.send(p.encode({"kind": p.GENERATE, "id": "x", "key": key, "request": request}))
        assert raw.poll(5000)
        answer = p.decode(raw.recv_multipart()[0])
        assert answer["kind"] == p.ERROR and expected in answer["message"], answer
    raw.send(p.encode({"kind": p.STATUS, "key": "wrong"}))
    assert raw.poll(5000) and "wrong key" in p.decode(raw.recv_multipart()[0])["message"]
    raw.close(0)
    with pytest.raises(ServiceError, match="wrong key"):
        remote_model(address, "wrong").generate("Hello", max_new_tokens=2)
    assert remote.generate("Hello", max_new_tokens=2).n_generated == 2


@pytest.mark.slow
def test_a_client_that_goes_away_is_forgotten(service):
    address, key, log_path = service
    leaving = encrypted_socket(address)
    leaving.send(p.encode({"kind": p.GENERATE, "id": "a", "key": key,
                           "request": GenerationRequest("Tell me a long story", 32).to_json()}))
    assert leaving.poll(5000)  # queued or already running
    leaving.close(0)  # the page closed: its kernel and socket are gone
    deadline = time.monotonic() + 30
    while "stopped, the viewer has gone" not in log_path.read_text():
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)
    assert remote_model(address, key).generate("Hi", max_new_tokens=2).n_generated == 2


def test_the_queue_serves_clients_in_arrival_order_one_request_each():
    queue = FairQueue()
    request = GenerationRequest("x")
    assert [queue.put(c, "r", request, None) for c in (b"a", b"b", b"c")] == [0, 1, 2]
    with pytest.raises(SettingsError, match="previous request is still waiting"):
        queue.put(b"a", "r2", request, None)
    with pytest.raises(SettingsError, match="queue is full"):
        queue.put(b"d", "r", request, max_waiting=3)
    queue.forget(b"b")  # a page closed
    assert [(c, ahead) for c, _, ahead in queue.places()] == [(b"a", 0), (b"c", 1)]
    assert queue.take()[0].client == b"a" and queue.take()[0].client == b"c" and len(queue) == 0


def test_the_queue_gives_a_batch_of_waiting_requests_that_share_settings_in_arrival_order():
    queue = FairQueue()
    greedy, longer, branch = GenerationRequest("x", 8), GenerationRequest("x", 9), GenerationRequest(
        token_ids=[1, 2], forced=3)
    for client, request in [(b"a", greedy), (b"b", longer), (b"c", GenerationRequest("y", 8)), (b"d", branch),
                            (b"e", GenerationRequest("z", 8)), (b"f", GenerationRequest("w", 8))]:
        queue.put(client, "r", request, None)
    assert [w.client for w in queue.take(limit=3)] == [b"a", b"c", b"e"]  # the oldest and two like it, in order
    assert [w.client for w in queue.take(limit=3)] == [b"b"]  # nothing else asks for 9 new tokens
    assert [w.client for w in queue.take(limit=3)] == [b"d"]  # a branch goes alone
    assert [w.client for w in queue.take(limit=1)] == [b"f"] and len(queue) == 0


def test_requests_and_limits_are_checked_without_a_model():
    with pytest.raises(SettingsError, match="prompt is empty"):
        GenerationRequest("")
    with pytest.raises(SettingsError, match="characters"):
        GenerationRequest("x" * (p.MAX_PROMPT_CHARACTERS + 1))
    with pytest.raises(SettingsError, match="temperature"):
        GenerationRequest.from_json({"prompt": "x", "temperature": -1})
    limits = Limits.for_class(30)
    assert Limits.from_json(limits.to_json()) == limits and Limits.from_json(None) == Limits()
    assert p.is_loopback("tcp://127.0.0.1:5555") and not p.is_loopback("tcp://0.0.0.0:5555")


def test_a_silent_service_is_reported_in_a_sentence():
    remote = RemoteModel(f"tcp://127.0.0.1:{free_port()}", silence_seconds=1)  # nobody listens there
    with pytest.raises(ServiceError, match="stopped answering"):
        remote.generate("Hello", max_new_tokens=2)
    with pytest.raises(ServiceError, match="did not answer"):
        remote.status(timeout=1)


@pytest.mark.slow
def test_the_viewer_kernel_shows_the_services_trace_and_never_imports_torch(service):
    """The dashboard notebook run in a real kernel against the service; then, in that same kernel, a check."""
    import nbformat
    from nbclient import NotebookClient

    address, key, _ = service
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys\n"
        "board = _\n"
        "board.open_first_trace()  # what the page's first drawing triggers\n"
        "assert board.trace is not None and board.trace.model.name == 'SmolLM2-135M-Instruct'\n"
        "board.prompt.value, board.max_new_tokens.value = 'The cat sat on the', 4\n"
        "board.chat.value = False\n"
        "trace = board.generate()\n"
        "assert trace is not None and trace.n_generated == 4, board.message.value\n"
        "assert board.live.value, 'the tokens were shown as they came'\n"
        "board.max_new_tokens.value = 500\n"
        "assert board.generate() is None and 'at most 32 new tokens' in board.message.value\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, f'the viewer kernel imported {bad}'\n"
    ))
    env = {p.SERVICE_ENV: address, p.KEY_ENV: key, p.PUBLIC_KEY_ENV: SERVE_KEYS.public,
           p.LIMITS_ENV: Limits.for_class(3).to_json()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_pages_wait_with_the_loading_percent_then_get_their_traces():
    """A service whose model is still loading: the page says how far, a request waits with the percent, and
    both the first trace and the request's trace come once it is loaded (a tiny model, in this process)."""
    import threading

    from conftest import make_tiny_lm
    from explorer.dashboard import Dashboard

    release = threading.Event()

    def slow_load(self):
        self._stage(40, "loading the model")
        release.wait(60)
        self.lm = make_tiny_lm("llama")
        self.status.model = self.lm.info().to_dict()
        self.first_trace = self.lm.generate("abc", 3, progress=False).to_bytes()
        self._stage(100, "ready")
        self.status.state = "ready"

    with service_in_this_process(slow_load, key="k") as (address, _):
        try:
            board = Dashboard(lm=RemoteModel(address, "k"))
            board.open_first_trace()  # nothing to show yet: the page says so and waits in the background
            until = time.monotonic() + 20
            while "loading the model … 40%" not in board.progress_label.value:
                assert time.monotonic() < until, board.progress_label.value
                time.sleep(0.1)
            assert board.trace is None and board.progress.value == 40 and "loading" in board.message.value
            statuses, results = [], []
            asking = threading.Thread(target=lambda: results.append(
                RemoteModel(address, "k").generate("hello", 2, on_status=statuses.append)))
            asking.start()
            time.sleep(1.5)
            assert "loading the model … 40%" in statuses and not results  # it waits, and says why
            release.set()
            asking.join(30)
            assert results and results[0].n_generated == 2 and results[0].model.name == "tiny-llama"
            while "Ready" not in board.message.value:  # the first trace, shown from the background thread
                assert time.monotonic() < until + 30
                time.sleep(0.1)
            assert board.trace.n_generated == 3 and board.progress_label.value == ""
        finally:
            release.set()


def test_a_model_that_cannot_load_is_said_in_a_sentence():
    from explorer.errors import ModelLoadError

    def failing_load(service):
        raise ModelLoadError("could not load model 'nope': it is not a local folder")

    with service_in_this_process(failing_load) as (address, _):
        remote = RemoteModel(address)
        deadline = time.monotonic() + 10
        while remote.status().state != "failed":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(ServiceError, match="the model could not be loaded: ModelLoadError: could not load"):
            remote.generate("hello", 2)


def test_requests_that_waited_for_a_model_that_then_fails_get_the_reason():
    import threading

    from explorer.errors import ModelLoadError

    release = threading.Event()

    def failing_late(service):
        service._stage(40, "loading the model")
        release.wait(30)
        raise ModelLoadError("could not load model 'nope'")

    with service_in_this_process(failing_late) as (address, _):
        errors = []

        def ask():
            try:
                RemoteModel(address).generate("hello", 2)
            except ServiceError as e:
                errors.append(str(e))

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(1.0)  # queued while the model loads
        release.set()
        asking.join(20)
        assert not asking.is_alive(), "the request hung after the model failed to load"
        assert errors and "could not load model 'nope'" in errors[0]


def test_malformed_messages_are_refused_and_the_service_keeps_serving():
    # no model needed: only the I/O thread is under test
    with service_in_this_process(lambda service: service._stopping.wait(60), key="k") as (address, _):
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.connect(address)
        raw.send(b"[" * 100_000 + b"]" * 100_000)  # nested too deep for json: refused before the key is read
        huge = {"kind": p.GENERATE, "id": "x", "key": "k", "request": {"prompt": "hi", "temperature": 10**400}}
        raw.send(p.encode(huge))  # overflows math.isfinite
        assert raw.poll(5000)
        answer = p.decode(raw.recv_multipart()[0])
        assert answer["kind"] == p.ERROR and answer["error"] == "SettingsError", answer
        raw.close(0)
        assert RemoteModel(address, "k").status(timeout=5).state == "loading"  # still answering


# --- batches: the requests waiting when the model comes free go through one generate call
def until(condition, what: str, timeout: float = 30) -> None:
    """Wait for a state (never for a time): poll `condition` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def assert_same_trace(got, want) -> None:
    """A trace from the service against the same prompt generated alone here: tokens, every head, the steps."""
    assert got.token_ids == want.token_ids and got.tokens == want.tokens and got.n_prompt == want.n_prompt
    for layer in range(want.n_layers):
        for head in range(want.n_heads):
            np.testing.assert_allclose(got.attention(layer, head), want.attention(layer, head), atol=1e-5)
    assert [s.prob for s in got.steps] == pytest.approx([s.prob for s in want.steps], abs=1e-5)
    np.testing.assert_allclose(got.surprisal, want.surprisal, atol=1e-4)


@contextmanager
def batching_service(after_token=None, after_trace=None, broken: str | None = None, after_capture=None, **options):
    """A tiny Llama behind a service in this process, whose model becomes ready only on `release.set()`, so that
    requests can wait for it together; every call of its `lm.generate` is recorded, and `after_token(row, done,
    total, text)`, `after_capture(row, trace)` and `after_trace(row, trace)`, when given, run after each token, trace
    before its lens, and trace the service got from a batch. A call with the prompt `broken` fails as
    a model would (alone or in a batch). Yields (address, service, release, calls, lm); `calls` gets each call's
    prompt (a list for a batch). `options` go to the service."""
    import threading

    from conftest import make_tiny_lm

    release, calls = threading.Event(), []
    lm = make_tiny_lm("llama")
    plain = lm.generate

    def counted(prompt, *args, on_token=None, on_trace=None, on_capture=None, **kwargs):
        calls.append(prompt)
        if broken is not None and broken in (prompt if isinstance(prompt, list) else [prompt]):
            raise CaptureError(f"tiny-llama failed while its attention was captured ({broken!r})")
        return plain(prompt, *args, on_token=_then(on_token, after_token), on_trace=_then(on_trace, after_trace),
                     on_capture=_then(on_capture, after_capture), **kwargs)

    def load(service):
        service._stage(40, "loading the model")
        release.wait(60)
        service.lm = lm
        service.status.model = lm.info().to_dict()
        service.first_trace = lm.generate("abc", 3, progress=False).to_bytes()
        lm.generate = counted
        service._stage(100, "ready")
        service.status.state = "ready"

    with service_in_this_process(load, **options) as (address, service):
        try:
            yield address, service, release, calls, lm
        finally:
            release.set()
            lm.generate = plain


def _then(callback, after):
    """`callback`, then `after` with the same arguments (either may be None)."""
    if callback is None or after is None:
        return callback

    def both(*args):
        callback(*args)
        after(*args)

    return both


def raw_page(address: str, request_id: str, request: GenerationRequest) -> zmq.Socket:
    """A page's bare ZeroMQ socket (no RemoteModel) that has sent one generate request: the test reads the answers
    itself and closes it when the page goes away (it lingers on nothing)."""
    page = zmq.Context.instance().socket(zmq.DEALER)
    page.setsockopt(zmq.LINGER, 0)
    page.connect(address)
    page.send(p.encode({"kind": p.GENERATE, "id": request_id, "key": "", "request": request.to_json()}))
    return page


def ask_in_threads(address: str, asks: list[dict]) -> tuple[list, list[list[str]], list]:
    """Each of `asks` (keywords of RemoteModel.generate) from a client of its own, at once: (threads, tokens heard
    by each, results: a Trace or the error raised)."""
    import threading

    heard, results = [[] for _ in asks], [None] * len(asks)

    def ask(i: int) -> None:
        try:
            results[i] = RemoteModel(address).generate(on_token=lambda d, t, text: heard[i].append(text), **asks[i])
        except Exception as e:  # noqa: BLE001 (checked by the test)
            results[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for thread in threads:
        thread.start()
    return threads, heard, results


def test_requests_waiting_together_go_through_one_generate_call_and_each_gets_its_own_trace():
    asks = [{"prompt": text, "max_new_tokens": 6} for text in ("The cat", "A much longer prompt here", "Hi!")]
    with batching_service(limits=Limits.for_class(3)) as (address, service, release, calls, lm):
        threads, heard, results = ask_in_threads(address, asks)
        until(lambda: len(service.queue) == 3, "the three requests did not all wait for the model")
        release.set()
        for thread in threads:
            thread.join(60)
        assert len(calls) == 1 and sorted(calls[0]) == sorted(a["prompt"] for a in asks), calls  # one batch of 3
        for ask, got, tokens in zip(asks, results, heard):
            want = lm.generate(ask["prompt"], 6, keep_values=True, progress=False)
            assert_same_trace(got, want)
            assert "".join(tokens) == want.generated_text  # each page heard its own tokens, in order


def test_a_viewer_that_leaves_its_batch_does_not_stop_the_others():
    asks = [{"prompt": "Stay here", "max_new_tokens": 6}, {"prompt": "Me too, please", "max_new_tokens": 6}]
    services, noticed = [], []

    def hold(row, done, total, text):
        """The batch waits after its second token until the service has noticed that the page left."""
        if done == 2 and not noticed:
            until(lambda: services[0]._gone, "the service did not notice that the page left")
            noticed.append(True)

    with batching_service(after_token=hold, limits=Limits.for_class(3)) as (address, service, release, calls, lm):
        services.append(service)
        leaving = raw_page(address, "leaving", GenerationRequest("Bye now", 6))
        threads, heard, results = ask_in_threads(address, asks)
        until(lambda: len(service.queue) == 3, "the three requests did not all wait for the model")
        release.set()
        heard_first = False
        while not heard_first:  # its row is running in the batch ...
            assert leaving.poll(30_000), "the leaving page heard no token"
            heard_first = p.decode(leaving.recv_multipart()[0])["kind"] == p.TOKEN
        leaving.close(0)  # ... and its page closes
        for thread in threads:
            thread.join(60)
        assert noticed == [True]
        assert len(calls) == 1 and sorted(calls[0]) == sorted(["Bye now", "Stay here", "Me too, please"]), calls
        for ask, got, tokens in zip(asks, results, heard):
            want = lm.generate(ask["prompt"], 6, keep_values=True, progress=False)
            assert_same_trace(got, want)
            assert "".join(tokens) == want.generated_text


def test_requests_with_other_settings_are_not_mixed_and_a_bad_prompt_gets_its_own_error():
    asks = [{"prompt": "The cat", "max_new_tokens": 5},
            {"prompt": "word " * 60, "max_new_tokens": 5},  # 301 tokens: more than the class's 256
            {"prompt": "A dog", "max_new_tokens": 5},
            {"prompt": "A dog", "max_new_tokens": 4},
            {"prompt": "A bird", "max_new_tokens": 5, "temperature": 0.8, "seed": 3},
            {"prompt": "x" * 125, "max_new_tokens": 5},  # 126 tokens + 5 do not fit the tiny model's 128
            {"prompt": "A fish", "max_new_tokens": 5, "ablate": [(1, 2)]}]
    with batching_service(limits=Limits.for_class(len(asks))) as (address, service, release, calls, lm):
        threads, heard, results = ask_in_threads(address, asks)
        until(lambda: len(service.queue) == len(asks), "the requests did not all wait for the model")
        release.set()
        for thread in threads:
            thread.join(60)
        # the three greedy 5-token requests that can be generated share one call; every other setting its own
        batched = [c for c in calls if isinstance(c, list)]
        assert len(calls) == 4 and len(batched) == 1 and sorted(batched[0]) == ["A dog", "The cat"], calls
        assert sorted(c for c in calls if isinstance(c, str)) == ["A bird", "A dog", "A fish"], calls
        assert isinstance(results[1], SettingsError) and "this class allows at most 256" in str(results[1])
        assert isinstance(results[5], SettingsError) and "at most 2 new tokens fit" in str(results[5])
        for ask, got, tokens in zip(asks, results, heard):
            if isinstance(got, Exception):
                assert not tokens
                continue
            settings = {k: v for k, v in ask.items() if k != "prompt"}
            want = lm.generate(ask["prompt"], keep_values=True, progress=False, **settings)
            assert_same_trace(got, want)
            assert "".join(tokens) == want.generated_text


def test_a_batch_that_fails_goes_again_one_by_one_and_only_the_failing_request_gets_the_error():
    asks = [{"prompt": text, "max_new_tokens": 5} for text in ("Fine", "Breaks the model", "Also fine")]
    with batching_service(broken="Breaks the model", limits=Limits.for_class(3)) as (address, service, release,
                                                                                     calls, lm):
        threads, _, results = ask_in_threads(address, asks)
        until(lambda: len(service.queue) == 3, "the three requests did not all wait for the model")
        release.set()
        for thread in threads:
            thread.join(60)
        assert len(calls) == 4 and sorted(calls[0]) == sorted(a["prompt"] for a in asks), calls  # then each alone
        assert sorted(calls[1:]) == sorted(a["prompt"] for a in asks), calls
        assert isinstance(results[1], ServiceError) and "failed while its attention was captured" in str(results[1])
        for i in (0, 2):
            assert_same_trace(results[i], lm.generate(asks[i]["prompt"], 5, keep_values=True, progress=False))


def test_each_page_of_a_batch_gets_its_trace_before_the_lens_and_then_the_lens():
    asks = [{"prompt": text, "max_new_tokens": 5} for text in ("First", "Second one", "Third")]
    early: list[list] = [[] for _ in asks]
    for ask, seen in zip(asks, early):  # what each page could draw at once: attention and steps, no lens yet
        ask["on_capture"] = lambda trace, seen=seen: seen.append((trace, trace.lens, trace.lens_pending))
    lens_read: list = []

    def hold(row, trace):
        """After the service captured a row, the batch goes on only once that page holds the trace: a service
        that sent the traces only with their lens would never let it go on."""
        until(lambda: any(t.token_ids == trace.token_ids for seen in early for t, _, _ in seen),
              "the page got its trace only with its lens")
        assert not lens_read

    with batching_service(after_capture=hold, after_trace=lambda row, trace: lens_read.append(row),
                          limits=Limits.for_class(3)) as (address, service, release, calls, lm):
        threads, _, results = ask_in_threads(address, asks)
        until(lambda: len(service.queue) == 3, "the three requests did not all wait for the model")
        release.set()
        for thread in threads:
            thread.join(60)
        assert len(calls) == 1 and len(calls[0]) == 3, calls
        for ask, got, seen in zip(asks, results, early):
            want = lm.generate(ask["prompt"], 5, keep_values=True, progress=False)
            assert_same_trace(got, want)
            [(shown, lens_then, pending_then)] = seen
            assert shown is got and lens_then is None and pending_then  # the page's own object got the lens
            assert not got.lens_pending and got.timings["lens"] >= 0
            np.testing.assert_array_equal(got.lens.top_ids, want.lens.top_ids)
            np.testing.assert_allclose(got.lens.next_prob, want.lens.next_prob, rtol=1e-5, atol=1e-7)
            assert got.lens.words == want.lens.words


def test_stop_ends_every_thread_of_the_service_even_with_a_generation_running():
    """stop() while a request is mid-generation: it returns once the worker (between two tokens) and the I/O thread
    have ended, and no thread of the service is left (a service that only asked them to stop leaves the worker
    generating, then waiting in the queue forever)."""
    import threading

    def new_threads() -> list[str]:  # but those a process keeps once started: tqdm's monitor and the lens's reader
        return [t.name for t in threading.enumerate() if t not in before
                and t.name not in ("tqdm_monitor", "logit-lens-reader_0")]

    before = set(threading.enumerate())
    services, running = [], threading.Event()

    def hold(*token):
        """The generation is mid-way (one token out of 20) until stop() is asked."""
        running.set()
        assert services[0]._stopping.wait(30), "stop() was not asked"

    with batching_service(after_token=hold, limits=Limits.for_class(3)) as (address, service, release, _, _):
        services.append(service)
        page = raw_page(address, "mid", GenerationRequest("Hold on", 20))
        release.set()
        assert running.wait(30), "the generation did not start"
        assert sorted(new_threads()) == ["generation service I/O", "generation worker"], new_threads()
        service.stop()
        assert new_threads() == [], f"threads still running after stop(): {new_threads()}"
        heard = []
        while page.poll(0):
            heard.append(p.decode(page.recv_multipart()[0])["kind"])
        assert p.TRACE not in heard, heard  # the generation stopped: no trace was sent
        page.close(0)
        service.stop()  # a second stop is harmless


def test_a_worker_that_will_not_stop_is_said_in_a_sentence():
    import threading

    from explorer.service.server import GenerationService

    release = threading.Event()

    class Stuck(GenerationService):
        def _load(self):  # a model step that does not look at the service stopping
            release.wait(60)

        def _read_first_trace(self):
            self.first_trace = None

    service = Stuck(f"tcp://127.0.0.1:{free_port()}").start()
    try:
        until(lambda: service._worker is not None, "the worker did not start")
        with pytest.raises(ServiceError, match=r"did not stop within 0 s: .*generation worker"):
            service.stop(timeout=0.2)
    finally:
        release.set()
    service.stop()  # once the step ends, it stops
    assert not service._worker.is_alive() and not service._thread.is_alive()
