"""What viewer kernels and the generation service say to each other, and the limits a class runs under.

Every message is a list of ZeroMQ frames: one JSON object, then, for a finished trace only, the bytes of a trace
file (safetensors + JSON, the format of `Trace.save`). Nothing is ever pickled. Frames travel encrypted with
ZeroMQ's CURVE when the service has a key pair (`keys.py`; `serve` always has one). A request names its kind; the
answers to a `generate` request carry its id, so that a client can tell them from answers to an older request.

    client → service   {"kind": "generate", "id", "key", "request": {prompt, max_new_tokens, ...}}
                       {"kind": "cancel", "id", "key"}  ·  {"kind": "status", "key"}  ·  {"kind": "first_trace", "key"}
    service → client   {"kind": "queued", "id", "ahead"}       place in the queue, repeated while waiting
                       {"kind": "loading", "id", "percent", "stage"}   the model is still loading
                       {"kind": "token", "id", "done", "total", "text"}   each new token as it comes
                       {"kind": "trace", "id"} + trace bytes   ·   {"kind": "error", "id", "error", "message"}
                       {"kind": "captured", "id"} + trace bytes    the trace before its logit lens is read (the
                       first views need no lens), then {"kind": "lens", "id"} + the bytes of what was made
                       after the capture (lens, attribution, their notes; `Trace.late_bytes`), which complete it
                       {"kind": "status", ...ServiceStatus}    ·   {"kind": "first_trace"} (+ trace bytes)

What the teacher shows the class (a class only; board.py keeps them):
    client → service   {"kind": "publish", "key", "teacher", "title"} + trace bytes    the teacher's key only
                       {"kind": "teacher", "key", "teacher"}       is this the teacher's key?
                       {"kind": "class_traces", "key"}             what was shown (the last few)
                       {"kind": "class_trace", "key", "number"}    one of them
    service → client   {"kind": "publish", "shown"}  ·  {"kind": "teacher", "ok"}
                       {"kind": "class_traces", "shown": [Shown, ...]}  ·  {"kind": "class_trace", "shown"} + bytes
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from urllib.parse import urlparse

from ..capture.settings import GenerationSettings
from ..errors import SettingsError

# requests
GENERATE, CANCEL, STATUS, FIRST_TRACE = "generate", "cancel", "status", "first_trace"
# answers
QUEUED, LOADING, TOKEN, TRACE, ERROR = "queued", "loading", "token", "trace", "error"
CAPTURED, LENS = "captured", "lens"
# what the teacher shows the class (questions and their answers share the kind)
PUBLISH, TEACHER, CLASS_TRACES, CLASS_TRACE = "publish", "teacher", "class_traces", "class_trace"

MAX_REQUEST_BYTES = 256_000  # a request is a prompt and a few numbers; anything larger is dropped by ZeroMQ
MAX_PROMPT_CHARACTERS = 100_000  # checked before tokenizing, so that nobody makes the service tokenize megabytes
SERVICE_ENV = "ATTENTION_EXPLORER_SERVICE"  # the service's address, for the viewer kernels
KEY_ENV = "ATTENTION_EXPLORER_SERVICE_KEY"  # the shared secret every request carries
PUBLIC_KEY_ENV = "ATTENTION_EXPLORER_SERVICE_PUBLIC_KEY"  # the service's CURVE public key, for the viewer kernels
SECRET_KEY_ENV = "ATTENTION_EXPLORER_SERVICE_SECRET_KEY"  # its secret key: how a dashboard hands its service the pair
TEACHER_KEY_ENV = "ATTENTION_EXPLORER_TEACHER_KEY"  # the key that lets a page show its trace to the class (service only)
LIMITS_ENV = "ATTENTION_EXPLORER_LIMITS"  # the class limits as JSON, for the viewer kernels
FIRST_PROMPT = "What is the capital of France?"  # the trace a dashboard opens with (greedy, chat where there is one)
FIRST_NEW_TOKENS = 20


def is_loopback(address: str) -> bool:
    """Whether a host name, or an address like tcp://host:port, reaches this machine only."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = urlparse(address).hostname if "://" in address else address
    return bool(host) and (host in {"localhost", "::1"} or host.startswith("127."))


def encode(message: dict) -> bytes:
    return json.dumps(message, ensure_ascii=False).encode()


def decode(frame: bytes) -> dict:
    """A JSON object from a frame; anything else raises ValueError."""
    message = json.loads(frame)
    if not isinstance(message, dict):
        raise ValueError("a message must be a JSON object")
    return message


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. No limits for one user; a class gets caps so that nobody waits long.

    max_new_tokens and max_prompt_tokens bound a request's length (a request's time grows with both);
    max_waiting bounds the queue; upload_bytes bounds a trace file loaded through the page.
    """

    max_new_tokens: int | None = None
    max_prompt_tokens: int | None = None
    max_waiting: int | None = None
    upload_bytes: int = 200_000_000
    class_size: int | None = None

    @classmethod
    def for_class(cls, students: int) -> Limits:
        """A class of `students`: 32 new tokens after at most 256 prompt tokens (about 1.5 s each on a laptop
        CPU), one waiting request per student, trace uploads up to 20 MB."""
        return cls(max_new_tokens=32, max_prompt_tokens=256, max_waiting=2 * students, upload_bytes=20_000_000,
                   class_size=students)

    def check_request(self, max_new_tokens: int) -> None:
        if self.max_new_tokens is not None and max_new_tokens > self.max_new_tokens:
            raise SettingsError(f"this class allows at most {self.max_new_tokens} new tokens a request, "
                                f"not {max_new_tokens}: ask for fewer")

    def check_prompt(self, n_tokens: int) -> None:
        if self.max_prompt_tokens is not None and n_tokens > self.max_prompt_tokens:
            raise SettingsError(f"the prompt has {n_tokens} tokens; this class allows at most "
                                f"{self.max_prompt_tokens}: shorten it")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> Limits:
        if not text:
            return cls()
        values = json.loads(text)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


MAX_TOKEN_IDS = 100_000  # a branch's prefix, as token ids
MAX_ABLATED = 10_000  # heads switched off in one request


@dataclass(frozen=True)
class GenerationRequest:
    """A prompt and the settings to generate it with: all a viewer may ask of the service (no model name,
    no file path, no other keyword of `generate`).

    A what-if request gives `token_ids` instead of a prompt (a branch's prefix), with the `forced` token (an id
    or one token's text) to put after them, and `ablate`: the (layer, head) pairs to switch off.
    """

    prompt: str = ""
    max_new_tokens: int = 20
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    chat: bool = False
    token_ids: list | None = None
    forced: int | str | None = None
    ablate: list = field(default_factory=list)

    def __post_init__(self):
        if self.token_ids is None:
            if not isinstance(self.prompt, str):
                raise SettingsError(f"the prompt must be text, not {type(self.prompt).__name__}")
            if not self.prompt:
                raise SettingsError("the prompt is empty: type some text")
            if len(self.prompt) > MAX_PROMPT_CHARACTERS:
                raise SettingsError(f"the prompt has {len(self.prompt):,} characters; at most "
                                    f"{MAX_PROMPT_CHARACTERS:,} are accepted")
        else:
            ids = self.token_ids
            if (not isinstance(ids, list) or not 0 < len(ids) <= MAX_TOKEN_IDS or self.prompt
                    or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids)):
                raise SettingsError("token_ids must be a non-empty list of token ids, given instead of a prompt")
        if self.forced is not None and (isinstance(self.forced, bool) or not isinstance(self.forced, (int, str))
                                        or (isinstance(self.forced, str) and not 0 < len(self.forced) <= 200)):
            raise SettingsError(f"forced must be a token id or one token's text, not {self.forced!r}")
        if self.forced is not None and self.token_ids is None:
            raise SettingsError("a forced token continues token_ids: give them")
        if not isinstance(self.ablate, list) or len(self.ablate) > MAX_ABLATED or any(
                not isinstance(pair, list) or len(pair) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in pair) for pair in self.ablate):
            raise SettingsError("ablate must be a list of [layer, head] pairs of whole numbers")
        if not isinstance(self.chat, bool):
            raise SettingsError(f"chat must be true or false, not {self.chat!r}")
        self.settings  # checks the numbers, with GenerationSettings' own sentences

    @property
    def settings(self) -> GenerationSettings:
        return GenerationSettings(self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values) -> GenerationRequest:
        if not isinstance(values, dict):
            raise SettingsError("a request must be a JSON object")
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise SettingsError(f"unknown request field(s): {', '.join(sorted(map(str, unknown)))}")
        if "prompt" not in values and "token_ids" not in values:
            raise SettingsError("the request has no prompt")
        return cls(**values)


@dataclass
class ServiceStatus:
    """What the service says of itself: loading (with a percent) or ready, the model's facts, the queue."""

    state: str  # "loading", "ready" or "failed"
    percent: int = 0
    stage: str = ""
    model: dict = field(default_factory=dict)  # ModelFacts.to_dict() once known (JSON on the wire)
    waiting: int = 0
    limits: dict = field(default_factory=dict)
    error: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @classmethod
    def from_json(cls, values: dict) -> ServiceStatus:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
