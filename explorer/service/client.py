"""The viewer side of the generation service: a model the dashboard can drive that lives in another process.

`RemoteModel.generate` sends a prompt and settings and returns the Trace it gets back, calling `on_status` with
the place in the queue (or the loading percent) and `on_token` with each token as it comes. It imports no torch
and no transformers: a viewer kernel stays as light as one that shows a saved trace. Given the service's public key
it talks CURVE (with a throwaway key pair of its own); a handshake the service refuses is an error at once.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import zmq

from ..errors import ServiceError, SettingsError
from ..facts import ModelFacts
from .. import whatif
from ..trace import Trace
from ..trace_file import add_late_parts, trace_from_bytes
from . import protocol as p
from .board import Shown
from .keys import public_key_from
from .protocol import GenerationRequest, ServiceStatus

SILENCE_SECONDS = 6.0  # the service speaks every 0.5 s to a waiting client; this long a silence means it is down
# what a socket monitor reports when ZeroMQ's handshake fails (a plain client meeting an encrypted service, a wrong
# public key ...): ZeroMQ itself retries silently forever, so without it the client would only see silence
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class RemoteModel:
    """The model of a generation service at `address`, driven like a LanguageModel. `key` is the shared key the
    service asks of every request; `server_key` the service's public key (what `serve` prints), without which the
    connection is not encrypted and an encrypted service does not answer."""

    def __init__(self, address: str, key: str = "", silence_seconds: float = SILENCE_SECONDS,
                 server_key: str | None = None):
        self.address, self.key, self.silence_seconds = address, key, silence_seconds
        self.server_key = public_key_from(server_key, "the service's public key")
        self.facts = ModelFacts()  # the model's facts, from the last status or trace
        self._context = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None  # the socket's handshake failures
        self._poller: zmq.Poller | None = None  # both of them

    @classmethod
    def from_environment(cls) -> RemoteModel:
        """The service a dashboard hands its viewer kernels: its address, shared key and public key."""
        return cls(os.environ[p.SERVICE_ENV], os.environ.get(p.KEY_ENV, ""),
                   server_key=os.environ.get(p.PUBLIC_KEY_ENV) or None)

    @property
    def name(self) -> str:
        return self.facts.name or "the service's model"

    @property
    def has_chat_template(self) -> bool:
        return bool(self.facts.chat_template)

    def info(self) -> ModelFacts:
        return self.facts

    # --- the connection
    def _connected(self) -> zmq.Socket:
        if self._socket is None:
            socket = self._context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            if self.server_key is not None:
                socket.curve_publickey, socket.curve_secretkey = zmq.curve_keypair()  # ours, gone with the socket
                socket.curve_serverkey = self.server_key.encode("ascii")
            self._monitor = socket.get_monitor_socket(HANDSHAKE_FAILED)
            socket.connect(self.address)
            self._poller = zmq.Poller()
            self._poller.register(socket, zmq.POLLIN)
            self._poller.register(self._monitor, zmq.POLLIN)
            self._socket = socket
        return self._socket

    def _reset(self) -> None:
        """Drop the connection and whatever old answers wait in it; the next call connects afresh."""
        if self._socket is not None:
            self._socket.disable_monitor()
            self._monitor.close(0)
            self._socket.close(0)
            self._socket = self._monitor = None

    def close(self) -> None:
        self._reset()

    def _send(self, message: dict, frames: tuple[bytes, ...] = ()) -> None:
        self._connected().send_multipart([p.encode({**message, "key": self.key}), *frames])

    def _receive(self, timeout: float) -> tuple[dict, list[bytes]] | None:
        """The next message, or None after `timeout` seconds of silence; a failed handshake raises at once."""
        socket = self._connected()
        events = dict(self._poller.poll(int(timeout * 1000)))
        if self._monitor in events:
            self._handshake_failed()
        if socket not in events:
            return None
        frames = socket.recv_multipart()
        return p.decode(frames[0]), frames[1:]

    def _handshake_failed(self) -> None:
        """Say in a sentence why the service refused our connection (ZeroMQ would retry in silence forever). Which
        side gave up first is a race, so the event's own detail is not relied on: what we know is our key."""
        self._reset()
        where = f"the generation service at {self.address}"
        if self.server_key is None:
            raise ServiceError(f"{where} refused the connection: it is encrypted, and this client has no key for "
                               f"it: give it the public key `attention-explorer serve` printed "
                               f"(${p.PUBLIC_KEY_ENV}, or dashboard --service-public-key)")
        raise ServiceError(f"{where} refused the encrypted connection: the public key given is not its key (serve "
                           "makes a new one at every start unless given --key-file: take the one it printed last), "
                           "or it does not encrypt")

    def _ask(self, kind: str, timeout: float, fields: dict | None = None,
             frames: tuple[bytes, ...] = ()) -> tuple[dict, list[bytes]]:
        """One question, one answer (status, first trace ...); older answers still in the pipe are passed over."""
        self._send({**(fields or {}), "kind": kind}, frames)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            answer = self._receive(left)
            if answer is None:
                break
            if answer[0].get("kind") in (kind, p.ERROR):
                _raise_if_error(answer[0])
                return answer
        self._reset()
        raise ServiceError(f"the generation service at {self.address} did not answer within {timeout:.0f} s")

    # --- what the dashboard asks
    def status(self, timeout: float = 3.0) -> ServiceStatus:
        message, _ = self._ask(p.STATUS, timeout)
        status = ServiceStatus.from_json(message)
        if status.model:
            self.facts = ModelFacts.from_dict(status.model)
        return status

    def first_trace(self, timeout: float = 3.0) -> Trace | None:
        """The trace the dashboard opens with, if the service has it yet."""
        _, frames = self._ask(p.FIRST_TRACE, timeout)
        if not frames:
            return None
        trace = trace_from_bytes(frames[0], "the service's first trace")
        self.facts = trace.model
        return trace

    # --- what the teacher shows the class
    def is_teacher(self, teacher_key: str, timeout: float = 3.0) -> bool:
        """Whether `teacher_key` is the teacher's key of this service's class."""
        message, _ = self._ask(p.TEACHER, timeout, {"teacher": teacher_key})
        return message.get("ok") is True

    def publish(self, trace: Trace, teacher_key: str, title: str = "", timeout: float = 30.0) -> Shown:
        """Show `trace` to the class: every student's page gets it in its session list. The teacher's key only."""
        message, _ = self._ask(p.PUBLISH, timeout, {"teacher": teacher_key, "title": title}, (trace.to_bytes(),))
        return _shown(message.get("shown"))

    def class_traces(self, timeout: float = 3.0) -> list[Shown]:
        """What the teacher has shown the class, oldest first (the service keeps the last few)."""
        message, _ = self._ask(p.CLASS_TRACES, timeout)
        shown = message.get("shown")
        if not isinstance(shown, list):
            raise ServiceError("the generation service sent a list of the class's traces it could not read")
        return [_shown(s) for s in shown]

    def class_trace(self, number: int, timeout: float = 30.0) -> tuple[Shown, Trace]:
        """The trace the teacher showed as `number`."""
        message, frames = self._ask(p.CLASS_TRACE, timeout, {"number": number})
        if not frames:
            raise ServiceError("the generation service sent no trace")
        return _shown(message.get("shown")), trace_from_bytes(frames[0], "the teacher's trace")

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        *,
        chat: bool = False,
        ablate: list[tuple[int, int]] | None = None,
        on_token: Callable[[int, int, str], None] | None = None,
        on_status: Callable[[str], None] | None = None,
        on_capture: Callable[[Trace], None] | None = None,
        **unused,
    ) -> Trace:
        """Ask the service for a trace of `prompt` and wait for it, reporting the queue and each token.
        `on_capture(trace)` gets the trace before its logit lens, as LanguageModel.generate's does; the same
        object gets the lens before it is returned.

        The service always keeps values (the attention-math view shows them) and shows no progress bar of its
        own, so `keep_values` and `progress` are accepted and ignored; any other keyword is refused.
        """
        _refuse_unknown(unused)
        request = GenerationRequest(prompt, max_new_tokens, temperature, top_k, top_p, seed, chat,
                                    ablate=_pairs(ablate))  # checks
        return self._request(request, on_token, on_status, on_capture)

    def generate_from_ids(self, token_ids: list[int], max_new_tokens: int = 20, temperature: float = 0.0,
                          top_k: int | None = None, top_p: float | None = None, seed: int | None = None, *,
                          forced=None, chat: bool = False, ablate=None, on_token=None, on_status=None,
                          **unused) -> Trace:
        """`generate` after token ids, with an optional forced first token, as LanguageModel.generate_from_ids.
        The service uses its own candidates, lens and precision; those keywords are accepted and ignored."""
        _refuse_unknown(unused, also=("candidates", "lens", "precision", "min_new_tokens"))
        forced = getattr(forced, "token_id", forced)  # a Candidate
        request = GenerationRequest("", max_new_tokens, temperature, top_k, top_p, seed, chat,
                                    token_ids=list(token_ids), forced=forced, ablate=_pairs(ablate))
        return self._request(request, on_token, on_status)

    def branch(self, trace: Trace, step: int, token, *, on_token=None, on_status=None, **unused) -> Trace:
        """As LanguageModel.branch: `trace` with generated token `step` replaced by `token` and what follows."""
        prefix, settings = whatif.branch_request(trace, step)
        continuation = self.generate_from_ids(prefix, forced=token, on_token=on_token, on_status=on_status,
                                              **settings)
        return whatif.graft(trace, step, continuation)

    def _request(self, request: GenerationRequest, on_token, on_status, on_capture=None) -> Trace:
        request_id = uuid.uuid4().hex
        self._send({"kind": p.GENERATE, "id": request_id, "request": request.to_json()})
        try:
            return self._await_trace(request_id, on_token, on_status, on_capture)
        except BaseException:  # a callback failed or the user interrupted: the service need not go on
            if self._socket is not None:
                self._send({"kind": p.CANCEL, "id": request_id})
            raise

    def _await_trace(self, request_id: str, on_token, on_status, on_capture=None) -> Trace:
        """Answers to `request_id` until its trace comes: the queue, the loading, each token, and the trace before
        its lens (handed to `on_capture`) when the lens comes apart."""
        captured: Trace | None = None
        while True:
            answer = self._receive(self.silence_seconds)
            if answer is None:
                self._reset()
                raise ServiceError(
                    "the generation service stopped answering (it restarts by itself): "
                    "your last trace is still shown; press Generate again in a few seconds")
            message, frames = answer
            if message.get("id") != request_id:
                continue  # an answer to an older request of this page
            kind = message.get("kind")
            if kind == p.TRACE:
                trace = trace_from_bytes(frames[0], "the service's answer")
                self.facts = trace.model
                return trace
            if kind == p.CAPTURED:
                captured = trace_from_bytes(frames[0], "the service's answer")
                captured.lens_pending = True
                self.facts = captured.model
                if on_capture is not None:
                    on_capture(captured)
                continue
            if kind == p.LENS and captured is not None:
                try:
                    add_late_parts(captured, frames[0] if frames else b"", "the service's lens")
                finally:  # a broken answer leaves the trace as it was shown, without a lens
                    captured.lens_pending = False
                return captured
            if kind == p.ERROR and captured is not None:  # the lens failed: the trace shown keeps going without
                captured.lens_pending = False
                captured.notes.append(f"No logit lens: {message.get('message', 'the service could not read it')}.")
                return captured
            _raise_if_error(message)
            if on_status is not None and kind == p.LOADING:
                on_status(f"loading the model … {message.get('percent', 0)}%")
            elif on_status is not None and kind == p.QUEUED:
                ahead = int(message.get("ahead", 0))
                on_status(f"waiting: {ahead} request{'s' * (ahead != 1)} ahead of yours" if ahead else "generating …")
            elif on_token is not None and kind == p.TOKEN:
                on_token(int(message["done"]), int(message["total"]), str(message["text"]))

    def __repr__(self) -> str:
        return f"RemoteModel({self.address!r}, {self.name!r})"


def _shown(values) -> Shown:
    try:
        return Shown(**values)
    except TypeError:
        raise ServiceError("the generation service described a class trace in a way this viewer cannot read") from None


def _refuse_unknown(unused: dict, also: tuple[str, ...] = ()) -> None:
    other = set(unused) - {"keep_values", "progress", *also}
    if other:
        raise SettingsError(f"the generation service takes no {', '.join(sorted(other))}")


def _pairs(ablate) -> list[list[int]]:
    """(layer, head) pairs as JSON lists; the request checks them."""
    if ablate is None:
        return []
    if not isinstance(ablate, (list, tuple)):
        raise SettingsError("ablate must be a list of (layer, head) pairs")
    return [list(pair) if isinstance(pair, (list, tuple)) else pair for pair in ablate]


def _raise_if_error(message: dict) -> None:
    if message.get("kind") != p.ERROR:
        return
    text = str(message.get("message", "the generation service refused the request"))
    raise SettingsError(text) if message.get("error") == "SettingsError" else ServiceError(text)
