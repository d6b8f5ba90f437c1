"""The Trace: what a model read and wrote, with its attention, positions and probabilities, as numpy arrays.

A Trace is the one contract between the model side (capture) and the view side (views, dashboard).
It holds no torch objects. Attention is kept small: for models that go through transformers'
attention interface we keep each layer's queries and keys and compute a head's rows when asked
(memory grows with T, not T²); for the others we keep the weights themselves (attention_store.py).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from safetensors.numpy import save, save_file

from .analysis import AnalysisAccessors
# the layer stores live in attention_store.py; capture and the views import them from here too
from .attention_store import AttentionLayer, QueryKeyLayer, WeightsLayer, without_position  # noqa: F401
from .contribution import AttributionAccessors
from .facts import ModelFacts
from .query_key import QueryKeyAccessors


class Candidate(NamedTuple):
    """One entry of a top-k list."""

    token: str
    token_id: int
    prob: float


@dataclass
class Step:
    """One generated token and the distributions it was drawn from."""

    index: int  # 0 for the first generated token
    position: int  # its position in the whole sequence
    token: str
    token_id: int
    prob: float  # probability under the model's own distribution, softmax(raw logits)
    rank: int  # 1 = the model's most likely token
    entropy: float  # of the model's distribution, in nats
    top_k: list[Candidate]  # under the model's distribution, most likely first
    sampling_prob: float  # probability under the distribution actually sampled from
    sampling_entropy: float
    sampling_top_k: list[Candidate]


@dataclass
class Positional:
    """The positional encoding the model uses, with its arrays for the positions of this trace.

    kind is "learned" (arrays: embeddings [T, d]), "rotary" (cos, sin [T, rotary_dim], inv_freq; a second table's
    arrays are cos_1, sin_1, inv_freq_1 ...), "sinusoidal" (table [T, d]), "alibi", "none", or "mixed" when layers
    differ. `layers` has one record a layer: its kind ("rotary", "alibi", "none" for NoPE, "absolute" for positions
    added at the input) and its parameters (table, rotary_dim, convention, theta, rope_type, slopes, layer_type,
    evidence: "measured" from the model's own keys or "declared" by its config).
    """

    kind: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    description: str = ""
    layers: list[dict] = field(default_factory=list)

    @property
    def layer_kinds(self) -> list[str]:
        """How position reaches each layer's scores: "rotary", "alibi", "none" (NoPE) or "absolute"."""
        return [layer["kind"] for layer in self.layers]

    @property
    def layer_params(self) -> list[dict]:
        """Each layer's parameters (theta, rotary_dim, rope_type, ALiBi slopes, ...), without its kind."""
        return [{k: v for k, v in layer.items() if k != "kind"} for layer in self.layers]

    def layer(self, layer: int) -> dict:
        """Layer `layer`'s record; a Positional made without records (an older file, by hand, a synthetic trace)
        gives every layer the model-wide kind, as declared: rotary with the first table and the model's parameters."""
        if layer < len(self.layers):
            return self.layers[layer]
        kind = {"learned": "absolute", "sinusoidal": "absolute"}.get(self.kind, self.kind)
        record = {"kind": kind, "evidence": "declared"}
        if kind == "rotary":
            record |= {"table": 0, "convention": "half", **{k: self.params.get(k) for k in
                       ("rotary_dim", "theta", "rope_type", "attention_scaling", "head_dim")}}
        return record

    def rotary_table(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """The cos and sin [T, rotary_dim] (rotate-half layout) that rotate layer `layer`'s queries and keys."""
        record = self.layer(layer)
        if record["kind"] != "rotary":
            raise ValueError(f"layer {layer} is not rotary: position reaches it as {record['kind']!r}")
        suffix = "" if not record.get("table") else f"_{record['table']}"
        return self.arrays[f"cos{suffix}"], self.arrays[f"sin{suffix}"]

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)


def _covered(positions: np.ndarray, position: int, what: str) -> int:
    """Where `position` is in the ascending `positions`; IndexError, naming what `what` covers, when it is not."""
    i = int(np.searchsorted(positions, position))
    if i == len(positions) or positions[i] != position:
        covered = positions.tolist()
        shown = covered if len(covered) <= 12 else [*covered[:5], "...", *covered[-5:]]
        raise IndexError(f"{what} does not cover position {position}; it covers {shown}")
    return i


@dataclass
class LogitLens:
    """What the residual stream after each block predicts (nostalgebraist 2020), at the positions it covers.

    Layer l's prediction at position p is softmax(lm_head(final_norm(h_l[p]))): the next token as block l would
    have it. The last layer is the model's own output. Only the top-k and the actual next token's probability
    and rank are kept, never hidden states, so a saved trace shows the lens without a model.
    """

    positions: np.ndarray  # int32 [P], ascending
    top_ids: np.ndarray  # int32 [L, P, k], most likely first
    top_probs: np.ndarray  # float32 [L, P, k]
    next_prob: np.ndarray  # float32 [L, P]: probability of the token at position + 1; NaN at the trace's end
    next_rank: np.ndarray  # int32 [L, P]: its rank, 1 = top; 0 at the trace's end
    words: dict[int, str] = field(default_factory=dict)  # the text of every id in top_ids

    @property
    def n_layers(self) -> int:
        return self.top_ids.shape[0]

    @property
    def k(self) -> int:
        return self.top_ids.shape[2]

    def column(self, position: int) -> int:
        """Where `position` is in `positions`; IndexError, naming what is covered, when it is not."""
        return _covered(self.positions, position, "the lens")

    def _layer(self, layer: int) -> int:
        if not -self.n_layers <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is out of range: the lens has layers 0..{self.n_layers - 1}")
        return layer % self.n_layers

    def top_k(self, layer: int, position: int) -> list[Candidate]:
        """The most likely next tokens after block `layer` at `position`, most likely first."""
        layer, column = self._layer(layer), self.column(position)
        return [Candidate(self.words.get(int(i), ""), int(i), float(p))
                for i, p in zip(self.top_ids[layer, column], self.top_probs[layer, column])]

    def next_token_prob(self, layer: int, position: int) -> float:
        """The probability block `layer` gives the token actually at position + 1 (NaN at the trace's end)."""
        return float(self.next_prob[self._layer(layer), self.column(position)])

    def next_token_rank(self, layer: int, position: int) -> int:
        """The rank block `layer` gives the token actually at position + 1 (1 = top; 0 at the trace's end)."""
        return int(self.next_rank[self._layer(layer), self.column(position)])

    def tensors(self) -> dict[str, np.ndarray]:
        return {"positions": self.positions, "top_ids": self.top_ids, "top_probs": self.top_probs,
                "next_prob": self.next_prob, "next_rank": self.next_rank}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors().values())


class StepAttribution(NamedTuple):
    """The shares of one logit (that of the token that came next at one position): they add up to `logit`."""

    position: int
    heads: np.ndarray  # [layers, heads]: each head's output through its slice of W_O
    attention_bias: np.ndarray  # [layers]: each output projection's bias (zeros where it has none)
    mlp: np.ndarray  # [layers]: all else each block wrote (its MLP; a norm of the attention output, where one is)
    embedding: float  # the first block's input: token (and learned position) embeddings
    constant: float  # the final norm's bias and lm_head's bias, through the unembedding row
    logit: float  # the model's own logit of the token (before a final soft-cap, where the model has one)

    @property
    def total(self) -> float:
        """The sum of the parts: equals `logit` (to float32 rounding)."""
        return float(self.heads.sum(dtype=np.float64) + self.attention_bias.sum(dtype=np.float64)
                     + self.mlp.sum(dtype=np.float64) + self.embedding + self.constant)


@dataclass
class LogitAttribution:
    """Direct logit attribution at the positions it covers (those the logit lens covers that have a next token):
    what each head, each block's MLP and the embedding wrote to the residual stream, through the final norm with its
    scale frozen and onto the unembedding row of the token that came next (explorer/capture/attribution.py)."""

    positions: np.ndarray  # int32 [P], ascending
    heads: np.ndarray  # float32 [P, L, H]
    attention_bias: np.ndarray  # float32 [P, L]
    mlp: np.ndarray  # float32 [P, L]
    embedding: np.ndarray  # float32 [P]
    constant: np.ndarray  # float32 [P]
    logit: np.ndarray  # float32 [P]

    def at(self, position: int) -> StepAttribution:
        """The shares of the logit of the token after `position`; IndexError naming what is covered."""
        i = _covered(self.positions, position, "the attribution")
        return StepAttribution(int(position), self.heads[i], self.attention_bias[i], self.mlp[i],
                               float(self.embedding[i]), float(self.constant[i]), float(self.logit[i]))

    def tensors(self) -> dict[str, np.ndarray]:
        return {"positions": self.positions, "heads": self.heads, "attention_bias": self.attention_bias,
                "mlp": self.mlp, "embedding": self.embedding, "constant": self.constant, "logit": self.logit}

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.tensors().values())


def new_id() -> str:
    """A fresh trace id: what a branch's parent_id refers to."""
    return uuid.uuid4().hex


FORMAT = "attention-explorer/trace"
# 2: surprisal, logit lens, value norms; 3: positions per layer, sinks, chunks, notes; 4: logit attribution
# (1 to 3 load)
VERSION = 4
KINDS = ("raw", "norm", "no_position")

_STEP_FIELDS = ("index", "position", "token", "token_id", "prob", "rank", "entropy", "sampling_prob", "sampling_entropy")


def _step_to_json(step: Step) -> dict:
    out = {name: getattr(step, name) for name in _STEP_FIELDS}
    out["top_k"] = [list(c) for c in step.top_k]
    out["sampling_top_k"] = [list(c) for c in step.sampling_top_k]
    return out


# The methods that call an analysis (head_scores, commitment, logit_attribution, contribution_graph, query_key_map,
# ...) live in that analysis's module, as the mixins this class inherits.
@dataclass
class Trace(AnalysisAccessors, AttributionAccessors, QueryKeyAccessors):
    """Tokens, per-head attention of every layer, positional encodings and per-step probabilities."""

    tokens: list[str]  # prompt then generated tokens, each decoded on its own
    token_ids: list[int]
    n_prompt: int
    layers: list[AttentionLayer]
    steps: list[Step]
    positional: Positional
    model: ModelFacts = field(default_factory=ModelFacts)  # name, architecture, sizes, device, dtype
    settings: dict = field(default_factory=dict)  # generation settings as used
    timings: dict = field(default_factory=dict)  # seconds
    pieces: list[str] | None = None  # tokens as the tokenizer's vocabulary spells them ("Ġcat")
    surprisal: np.ndarray | None = None  # float32 [T]: -ln p(token_i | tokens before i), NaN where unknown
    lens: LogitLens | None = None
    value_norms: np.ndarray | None = None  # float32 [L, H, T]: ‖v_j^h W_O^h‖ of each head and key position
    id: str = field(default_factory=new_id)  # names the trace in a tree of branches
    parent: Trace | None = field(default=None, repr=False, compare=False)  # the trace a branch came from
    branch_step: int | None = None  # the step of the parent this branch changed
    parent_id: str | None = None  # the parent's id, kept when the parent itself is not at hand
    notes: list[str] = field(default_factory=list)  # sentences: what this trace lacks and why (no lens, ...)
    # set while the trace is shown before its logit lens is read (generate's on_capture); never saved
    lens_pending: bool = field(default=False, repr=False, compare=False)
    attribution: LogitAttribution | None = None  # each head's share of each step's logit (with the lens)

    def __post_init__(self):
        if self.parent is not None:
            self.parent_id = self.parent.id
        if self.surprisal is None:  # what the steps say; the prompt's is unknown without the model
            self.surprisal = np.full(len(self.token_ids), np.nan, dtype=np.float32)
            for step in self.steps:
                self.surprisal[step.position] = -np.log(step.prob) if step.prob > 0 else np.inf

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return self.layers[0].n_heads if self.layers else 0

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def n_generated(self) -> int:
        return len(self.steps)

    @property
    def prompt_text(self) -> str:
        return "".join(self.tokens[: self.n_prompt])

    @property
    def generated_text(self) -> str:
        return "".join(self.tokens[self.n_prompt :])

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def _check(self, layer: int, head: int | None) -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is out of range: this trace has layers 0..{self.n_layers - 1}")
        if head is not None and not 0 <= head < self.n_heads:
            raise IndexError(f"head {head} is out of range: this trace has heads 0..{self.n_heads - 1}")

    def attention_rows(self, layer: int, head: int | None, start: int = 0, stop: int | None = None,
                       kind: str = "raw") -> np.ndarray:
        """Rows start..stop-1 of a head's attention (the mean of the layer's heads when head is None), [n, T].

        kind "raw" is the attention weights α; "norm" weighs them by what each key position writes,
        α_ij·‖v_j W_O‖ (Kobayashi et al. 2020), and needs a trace captured with value norms; "no_position" is the
        head's pattern with its positional term taken out (rotary undone, ALiBi's bias dropped).
        """
        self._check(layer, head)
        self._check_kind(kind)
        stop = self.n_tokens if stop is None else stop
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"rows {start}..{stop} are out of range for {self.n_tokens} tokens")
        store = self.layers[layer] if kind != "no_position" else self._without_position(layer)
        if head is not None:
            rows = store.rows(head, start, stop)
            return rows * self.value_norms[layer, head][None, :] if kind == "norm" else rows
        if kind == "norm":
            return (store.heads_rows(start, stop) * self.value_norms[layer][:, None, :]).mean(0)
        total = np.zeros((stop - start, self.n_tokens), dtype=np.float32)
        for h in range(self.n_heads):
            total += store.rows(h, start, stop)
        return total / np.float32(self.n_heads)

    def _without_position(self, layer: int) -> AttentionLayer:
        """Layer `layer` with its positional term taken out, from stored arrays alone (kept for the next call)."""
        cache = self.__dict__.setdefault("_no_position", {})
        if layer not in cache:
            cache[layer] = without_position(self.layers[layer], self.positional, layer)
        return cache[layer]

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if kind == "norm" and self.value_norms is None:
            raise ValueError("this trace has no value norms, so no value-weighted attention: capture it again with "
                             "this version of attention-explorer (models whose attention it cannot read have none)")

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of attention this trace can give: "raw", and "norm" when it holds value norms."""
        kinds = ["raw"] + ["norm"] * (self.value_norms is not None)
        position_terms = {"rotary", "alibi"} & set(self.positional.layer_kinds or [self.positional.kind])
        return tuple(kinds + ["no_position"] * bool(position_terms))

    def attention(self, layer: int, head: int | None = None, kind: str = "raw") -> np.ndarray:
        """Attention [T, T] of one head (or the mean of the layer's heads): row i = token i over 0..i.
        kind "raw" gives the weights; "norm" the value-weighted attention α_ij·‖v_j W_O‖."""
        return self.attention_rows(layer, head, kind=kind)

    def attention_row(self, layer: int, head: int | None, position: int) -> np.ndarray:
        """How the token at `position` attends to positions 0..position, [position + 1]."""
        return self.attention_rows(layer, head, position, position + 1)[0, : position + 1]

    def step_attention(self, step: int, layer: int, head: int | None = None) -> np.ndarray:
        """The attention that produced generated token `step`: the row of the position just before it."""
        return self.attention_row(layer, head, self.steps[step].position - 1)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays of this trace."""
        total = sum(a.nbytes for layer in self.layers for a in layer.tensors().values())
        total += sum(a.nbytes for a in self.positional.arrays.values()) + self.surprisal.nbytes
        total += self.value_norms.nbytes if self.value_norms is not None else 0
        total += self.attribution.nbytes if self.attribution is not None else 0
        return total + (self.lens.nbytes if self.lens is not None else 0)

    def save(self, path: str | os.PathLike) -> None:
        """Write this trace to a safetensors file with a JSON header (no pickle); a failed save leaves no half file."""
        _write(*self._tensors_and_metadata(), Path(path))

    def to_bytes(self) -> bytes:
        """The bytes of the file `save` writes, without a file: what the generation service sends."""
        tensors, metadata = self._tensors_and_metadata()
        return save(tensors, metadata=metadata)

    def late_bytes(self) -> bytes:
        """What is made after the capture (the logit lens, the attribution, their notes and timings) as safetensors
        bytes: what the generation service sends after a trace it sent before them (`trace_file.add_late_parts`
        puts them back)."""
        tensors, metadata = self._tensors_and_metadata()
        late = {name: array for name, array in tensors.items() if name.startswith(("lens.", "attribution."))}
        header = json.loads(metadata["header"])
        parts = {"lens": header["lens"], "attribution": header["attribution"], "notes": self.notes,
                 "timings": self.timings}
        return save(late, metadata={"format": FORMAT, "version": str(VERSION), "late": json.dumps(parts)})

    def _tensors_and_metadata(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """The arrays by name, and the metadata (format, version, JSON header) that describes them."""
        tensors: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            for name, array in layer.tensors().items():
                tensors[f"layers.{i}.attn.{name}"] = np.ascontiguousarray(array)
        for name, array in self.positional.arrays.items():
            tensors[f"positional.{name}"] = np.ascontiguousarray(array)
        tensors["surprisal"] = np.ascontiguousarray(self.surprisal, dtype=np.float32)
        if self.value_norms is not None:
            tensors["value_norms"] = np.ascontiguousarray(self.value_norms, dtype=np.float32)
        if self.lens is not None:
            for name, array in self.lens.tensors().items():
                tensors[f"lens.{name}"] = np.ascontiguousarray(array)
        if self.attribution is not None:
            for name, array in self.attribution.tensors().items():
                tensors[f"attribution.{name}"] = np.ascontiguousarray(array)
        header = {
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "pieces": self.pieces,
            "n_prompt": self.n_prompt,
            "layers": [layer.meta() for layer in self.layers],
            "steps": [_step_to_json(s) for s in self.steps],
            "positional": {
                "kind": self.positional.kind,
                "params": self.positional.params,
                "description": self.positional.description,
                "arrays": sorted(self.positional.arrays),
                "layers": self.positional.layers,
            },
            "model": self.model.to_dict(),
            "settings": self.settings,
            "timings": self.timings,
            "id": self.id,
            "branch": None if self.branch_step is None else {
                "parent": self.parent.id if self.parent is not None else self.parent_id, "step": self.branch_step},
            "notes": self.notes,
            "lens": None if self.lens is None else {"words": {str(i): w for i, w in sorted(self.lens.words.items())}},
            "attribution": None if self.attribution is None else {},
        }
        return tensors, {"format": FORMAT, "version": str(VERSION), "header": json.dumps(header)}

    def __repr__(self) -> str:
        name = self.model.name or "?"
        return (
            f"Trace({name!r}, {self.n_tokens} tokens = {self.n_prompt} prompt + {self.n_generated} generated, "
            f"{self.n_layers} layers x {self.n_heads} heads, positional={self.positional.kind!r})"
        )


def save_traces(traces: list[Trace], path: str | os.PathLike) -> None:
    """Write several traces (a tree of branches, the traces of a session) to one file; `load_traces` reads it
    back with each branch linked to its parent."""
    _write(*_several(traces), Path(path))


def traces_to_bytes(traces: list[Trace]) -> bytes:
    """The bytes of the file `save_traces` writes (a download of a session's traces)."""
    return save(*_several(traces))


def _several(traces: list[Trace]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not traces:
        raise ValueError("there are no traces to save")
    tensors: dict[str, np.ndarray] = {}
    headers = []
    for i, trace in enumerate(traces):
        own, metadata = trace._tensors_and_metadata()
        tensors.update({f"{i}.{name}": array for name, array in own.items()})
        headers.append(json.loads(metadata["header"]))
    return tensors, {"format": FORMAT, "version": str(VERSION), "traces": json.dumps(headers)}


def _write(tensors: dict[str, np.ndarray], metadata: dict[str, str], path: Path) -> None:
    """Write a safetensors file through a temporary one, so a failed save leaves no half file."""
    tmp = path.with_name(path.name + ".partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
