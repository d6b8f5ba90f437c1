"""Loading traces: one safetensors file whose metadata carries a versioned JSON header (`Trace.save` writes it).

safetensors holds only arrays and strings, so loading a file can never run code. Anything that is not a
trace of a version we know raises TraceFileError, whatever the way it is broken. This module reads and
distrusts; the Trace writes itself, so the import goes one way: trace_file → trace.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load

from .errors import TraceFileError
from .facts import ModelFacts
from .trace import (FORMAT, VERSION, Candidate, LogitAttribution, LogitLens, Positional, QueryKeyLayer, Step, Trace,
                    WeightsLayer)

def _step_from_json(d: dict) -> Step:
    def candidates(items):
        return [Candidate(str(t), int(i), float(p)) for t, i, p in items]

    return Step(
        index=int(d["index"]),
        position=int(d["position"]),
        token=str(d["token"]),
        token_id=int(d["token_id"]),
        prob=float(d["prob"]),
        rank=int(d["rank"]),
        entropy=float(d["entropy"]),
        top_k=candidates(d["top_k"]),
        sampling_prob=float(d["sampling_prob"]),
        sampling_entropy=float(d["sampling_entropy"]),
        sampling_top_k=candidates(d["sampling_top_k"]),
    )


def load_trace(path: str | os.PathLike) -> Trace:
    """Open a trace written by `Trace.save`; no model is needed."""
    traces = load_traces(path)
    if len(traces) != 1:
        raise TraceFileError(f"{path} holds {len(traces)} traces (a tree of branches): open it with load_traces")
    return traces[0]


def load_traces(path: str | os.PathLike) -> list[Trace]:
    """Open a file of `save_traces` (or of `Trace.save`: one trace), each branch linked to its parent."""
    path = Path(path)
    if not path.is_file():
        raise TraceFileError(f"{path} is not a file")
    with _readable(path):
        with safe_open(str(path), framework="numpy") as f:
            headers = _header(f.metadata() or {}, path)  # a dict, or a list for several
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        return _build_all(headers, tensors)


def _build_all(headers, tensors: dict[str, np.ndarray]) -> list[Trace]:
    if isinstance(headers, dict):
        return [_build(headers, tensors)]
    if not isinstance(headers, list) or not headers:
        raise ValueError("the file's list of traces is empty")
    traces = []
    for i, header in enumerate(headers):
        prefix = f"{i}."
        traces.append(_build(header, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}))
    by_id = {t.id: t for t in traces}
    if len(by_id) != len(traces):
        raise ValueError("two traces of the file have the same id")
    for trace in traces:
        if trace.parent_id is not None:
            trace.parent = by_id.get(trace.parent_id)
    return traces


def trace_from_bytes(data: bytes, name: str = "the data") -> Trace:
    """A trace from the bytes of a trace file (`Trace.to_bytes`, an upload); `name` is what errors call it."""
    traces = traces_from_bytes(data, name)
    if len(traces) != 1:
        raise TraceFileError(f"{name} holds {len(traces)} traces (a tree of branches), not one")
    return traces[0]


def traces_from_bytes(data: bytes, name: str = "the data") -> list[Trace]:
    """The traces in the bytes of a file of `save_traces` or `Trace.save` (an upload), parents relinked."""
    with _readable(name):
        return _build_all(_header(_metadata(data), name), load(data))


def _metadata(data: bytes) -> dict:
    """The metadata of safetensors bytes, read before the arrays (ValueError for what is not safetensors)."""
    if len(data) < 8:
        raise ValueError("too short to be a safetensors file")
    size = int.from_bytes(data[:8], "little")
    if not 2 <= size <= len(data) - 8:
        raise ValueError("the header length does not fit the data")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def add_late_parts(trace: Trace, data: bytes, name: str = "the data") -> None:
    """Put onto `trace` what `Trace.late_bytes` holds (the logit lens, the attribution, the notes and timings made
    with them), each part checked against the trace; TraceFileError, with the trace unchanged, if any is wrong."""
    with _readable(name):
        metadata = _metadata(data)
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or "late" not in metadata:
            raise TraceFileError(f"{name} is not the late parts of an attention-explorer trace")
        late = json.loads(metadata["late"])
        tensors = load(data)
        lens = _lens(late.get("lens"), tensors, trace.n_layers, trace.n_tokens)
        attribution = _attribution(late.get("attribution"), tensors, trace.n_layers, trace.n_heads, trace.n_tokens)
        notes = [str(n) for n in late.get("notes", [])]
        timings = {str(k): float(v) for k, v in dict(late.get("timings", {})).items()}
    trace.lens, trace.attribution, trace.notes, trace.timings = lens, attribution, notes, trace.timings | timings


@contextmanager
def _readable(name):
    """Turn whatever a broken file raises into TraceFileError, naming the file."""
    try:
        yield
    except TraceFileError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, IndexError, AttributeError,
            ArithmeticError) as e:
        raise TraceFileError(f"{name} is not a readable attention-explorer trace ({type(e).__name__}: {e})") from e


def _header(metadata: dict, name) -> dict | list:
    """The JSON header of a trace file, once its format and version are known to be ours."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise TraceFileError(f"{name} is a safetensors file but not an attention-explorer trace")
    version = int(metadata.get("version", "0"))
    if version > VERSION:
        raise TraceFileError(
            f"{name} is a trace of format version {version}; this attention-explorer reads up to "
            f"version {VERSION}: upgrade attention-explorer to open it"
        )
    if version < 1:
        raise TraceFileError(f"{name} has no valid trace version")
    if "traces" in metadata:
        return json.loads(metadata["traces"])
    return json.loads(metadata["header"])


def _build(header: dict, tensors: dict[str, np.ndarray]) -> Trace:
    tokens = [str(t) for t in header["tokens"]]
    token_ids = [int(t) for t in header["token_ids"]]
    n_tokens = len(token_ids)
    n_prompt = int(header["n_prompt"])
    if len(tokens) != n_tokens or not 0 < n_prompt <= n_tokens:
        raise ValueError("token lists do not match")
    layers = []
    for i, meta in enumerate(header["layers"]):
        prefix = f"layers.{i}.attn."
        if meta["kind"] == "query_key":
            query, key = tensors[prefix + "query"], tensors[prefix + "key"]
            if query.ndim != 3 or key.ndim != 3 or query.shape[1] != n_tokens or key.shape[1] != n_tokens:
                raise ValueError(f"layer {i} arrays do not fit {n_tokens} tokens")
            if not key.shape[0] or query.shape[0] % key.shape[0] or query.shape[2] != key.shape[2]:
                raise ValueError(f"layer {i} query and key heads do not fit together")
            value = tensors.get(prefix + "value")
            if value is not None and value.shape != key.shape:
                raise ValueError(f"layer {i} values have shape {value.shape}, not the keys' {key.shape}")
            layers.append(
                QueryKeyLayer(
                    query=query,
                    key=key,
                    scaling=float(meta["scaling"]),
                    sliding_window=_sliding_window(meta.get("sliding_window"), i),
                    softcap=_softcap(meta.get("softcap"), i),
                    value=value,
                    sinks=_array(tensors, prefix + "sinks", (query.shape[0],), np.floating),
                    chunk=_sliding_window(meta.get("chunk"), i, "chunk"),
                )
            )
        elif meta["kind"] == "weights":
            packed = tensors[prefix + "weights"]
            if packed.ndim != 2 or packed.shape[1] != n_tokens * (n_tokens + 1) // 2:
                raise ValueError(f"layer {i} weights do not fit {n_tokens} tokens")
            layers.append(WeightsLayer(packed=packed))
        else:
            raise ValueError(f"layer {i} has an unknown kind {meta['kind']!r}")
    if not layers or len({layer.n_heads for layer in layers}) != 1:
        raise ValueError("layers are missing or disagree on the number of heads")
    steps = [_step_from_json(s) for s in header["steps"]]
    if len(steps) != n_tokens - n_prompt:
        raise ValueError("the number of steps does not match the generated tokens")
    for i, step in enumerate(steps):
        if step.index != i or step.position != n_prompt + i or step.token_id != token_ids[step.position]:
            raise ValueError(f"step {i} does not match the token at its position")
    pos = header["positional"]
    positional = Positional(
        kind=str(pos["kind"]),
        arrays={name: tensors[f"positional.{name}"] for name in pos["arrays"]},
        params=dict(pos["params"]),
        description=str(pos.get("description", "")),
    )
    positional.layers = _layer_positions(pos, positional, len(layers))
    n_layers, n_heads = len(layers), layers[0].n_heads
    return Trace(
        tokens=tokens,
        token_ids=token_ids,
        n_prompt=n_prompt,
        layers=layers,
        steps=steps,
        positional=positional,
        model=ModelFacts.from_dict(header.get("model")),
        settings=dict(header.get("settings", {})),
        timings=dict(header.get("timings", {})),
        pieces=_pieces(header.get("pieces"), n_tokens),
        surprisal=_array(tensors, "surprisal", (n_tokens,), np.floating),  # absent from version 1 files
        value_norms=_array(tensors, "value_norms", (n_layers, n_heads, n_tokens), np.floating),
        lens=_lens(header.get("lens"), tensors, n_layers, n_tokens),
        attribution=_attribution(header.get("attribution"), tensors, n_layers, n_heads, n_tokens),
        notes=[str(note) for note in header.get("notes") or []],
        **_identity(header, len(steps)),
    )


def _layer_positions(pos: dict, positional: Positional, n_layers: int) -> list[dict]:
    """Each layer's positional record (version 3), or, for older files, the model-wide kind given to every layer."""
    layers = pos.get("layers")
    if layers is None:
        return [positional.layer(i) for i in range(n_layers)]
    if not isinstance(layers, list) or not all(isinstance(x, dict) and isinstance(x.get("kind"), str) for x in layers):
        raise ValueError("the positional layers are not a list of records with a kind")
    for i, layer in enumerate(layers):
        if layer["kind"] == "rotary":
            suffix = "" if not layer.get("table") else f"_{layer['table']}"
            cos = positional.arrays.get(f"cos{suffix}")
            if cos is None or cos.ndim != 2 or cos.shape[1] != layer.get("rotary_dim"):
                raise ValueError(f"layer {i}'s rotary table is missing or does not fit its rotary_dim")
    return [dict(x) for x in layers]


def _identity(header: dict, n_steps: int) -> dict:
    """The trace's id, and for a branch its parent's id and the step it changed (version 2 on)."""
    out = {}
    if header.get("id") is not None:
        out["id"] = str(header["id"])
    branch = header.get("branch")
    if branch is not None:
        step = branch["step"]
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < n_steps:
            raise ValueError(f"the branch step {step!r} is not a step of this trace")
        out |= {"parent_id": str(branch["parent"]), "branch_step": step}
    return out


def _array(tensors: dict[str, np.ndarray], name: str, shape: tuple, kind, required: bool = False) -> np.ndarray | None:
    """An array of the file, checked for its shape and kind of number; None when an optional one is absent."""
    array = tensors[name] if required else tensors.get(name)
    if array is None:
        return None
    if array.shape != shape or not np.issubdtype(array.dtype, kind):
        raise ValueError(f"{name} has shape {array.shape} and type {array.dtype}; expected {shape} of {kind.__name__}")
    return array.astype(np.float32) if kind is np.floating else array.astype(np.int32)


def _positions(tensors: dict[str, np.ndarray], name: str, below: int, n_tokens: int) -> np.ndarray:
    """Array `name`: ascending positions, each below `below`, int32; ValueError naming it otherwise."""
    positions = tensors[name]
    if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"{name} is not a list of positions")
    if len(positions) and (positions.min() < 0 or positions.max() >= below or np.any(np.diff(positions) <= 0)):
        raise ValueError(f"{name} are not ascending positions of the {n_tokens} tokens"
                         + (" with a next one" if below < n_tokens else ""))
    return positions.astype(np.int32)


def _lens(meta, tensors: dict[str, np.ndarray], n_layers: int, n_tokens: int) -> LogitLens | None:
    """The logit lens from its arrays and the header's words, every id and position checked; None when absent."""
    if meta is None:
        return None
    positions = _positions(tensors, "lens.positions", n_tokens, n_tokens)
    p = len(positions)
    top_ids = tensors["lens.top_ids"]
    if top_ids.ndim != 3 or top_ids.shape[:2] != (n_layers, p) or not np.issubdtype(top_ids.dtype, np.integer):
        raise ValueError(f"lens.top_ids has shape {top_ids.shape}, not [{n_layers}, {p}, k]")
    k = top_ids.shape[2]
    words = {int(i): str(w) for i, w in dict(meta["words"]).items()}
    missing = set(np.unique(top_ids).tolist()) - set(words)
    if missing:
        raise ValueError(f"lens words lack the text of {len(missing)} token ids")
    return LogitLens(
        positions=positions,
        top_ids=top_ids.astype(np.int32),
        top_probs=_array(tensors, "lens.top_probs", (n_layers, p, k), np.floating, required=True),
        next_prob=_array(tensors, "lens.next_prob", (n_layers, p), np.floating, required=True),
        next_rank=_array(tensors, "lens.next_rank", (n_layers, p), np.integer, required=True),
        words=words,
    )


def _attribution(meta, tensors: dict[str, np.ndarray], n_layers: int, n_heads: int,
                 n_tokens: int) -> LogitAttribution | None:
    """The logit attribution from its arrays, every shape and position checked; None when absent."""
    if meta is None:
        return None
    positions = _positions(tensors, "attribution.positions", n_tokens - 1, n_tokens)  # each has a next token
    p = len(positions)

    def part(name: str, shape: tuple) -> np.ndarray:
        return _array(tensors, f"attribution.{name}", shape, np.floating, required=True)

    return LogitAttribution(positions=positions, heads=part("heads", (p, n_layers, n_heads)),
                            attention_bias=part("attention_bias", (p, n_layers)), mlp=part("mlp", (p, n_layers)),
                            embedding=part("embedding", (p,)), constant=part("constant", (p,)),
                            logit=part("logit", (p,)))


def _sliding_window(value, layer: int, name: str = "sliding_window") -> int | None:
    """A layer's sliding window (or chunk) from the header: None or a whole number ≥ 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"layer {layer} has {name} {value!r}, not a whole number ≥ 1 or null")
    return value


def _softcap(value, layer: int) -> float | None:
    """A layer's logit soft-cap from the header: None or a finite number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"layer {layer} has softcap {value!r}, not a finite number > 0 or null")
    return float(value)


def _pieces(value, n_tokens: int) -> list[str] | None:
    """The tokenizer's pieces from the header: None or one string a token."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n_tokens or not all(isinstance(p, str) for p in value):
        raise ValueError(f"pieces must be a list of {n_tokens} strings, one a token, or null")
    return value
