"""Recording attention while a model runs.

Models that use transformers' AttentionInterface get one registered attention function that computes the
output with the model's own implementation (sdpa by default, so tokens are exactly those of plain
`generate`) and keeps the queries and keys it was given, after rotary. A head's weights are computed from
them later, when a view asks. Models outside the interface (GPT-Neo, ...) run eagerly with forward hooks
on their attention modules, which keep the weights themselves.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..trace import QueryKeyLayer, WeightsLayer

IMPLEMENTATION = "attention_explorer"
# keyword arguments that change the attention weights and that QueryKeyLayer does not reproduce
_UNSUPPORTED = ("s_aux", "attention_chunk_size", "position_bias")

_active: ContextVar[AttentionRecorder | None] = ContextVar("attention_explorer_recorder", default=None)


class PositionStore:
    """Every layer's queries (or keys, or values) in one numpy array [layers, heads, capacity, d], filled position
    by position: no per-step tensors to concatenate, no copy at the end. One allocation, made at the first forward
    pass and large enough for the C allocator to map it on its own: per-layer arrays of a few MB landed between
    the forward pass's temporaries and fragmented the heap (+40 MB of peak at 1,024 tokens on SmolLM2)."""

    def __init__(self, dtype: torch.dtype, capacity: int, n_layers: int):
        self.dtype, self.capacity, self.n_layers = dtype, capacity, n_layers
        self.array: np.ndarray | None = None
        self.filled: dict[int, int] = {}

    def append(self, layer: int, x: torch.Tensor) -> None:
        """Write x [heads, new, d] (batch row 0 of a forward pass) after what `layer` already holds."""
        heads, new, dim = x.shape
        at = self.filled.get(layer, 0)
        if self.array is None:
            self.array = np.empty((max(self.n_layers, layer + 1), heads, max(self.capacity, new), dim),
                                  dtype=_NUMPY[self.dtype])
        if layer >= self.array.shape[0] or at + new > self.array.shape[2]:  # more than announced: grow (a copy)
            layers = self.array.shape[0] if layer < self.array.shape[0] else 2 * (layer + 1)
            positions = self.array.shape[2] if at + new <= self.array.shape[2] else 2 * (at + new)
            grown = np.empty((layers, heads, positions, dim), dtype=self.array.dtype)
            grown[: self.array.shape[0], :, : self.array.shape[2]] = self.array
            self.array = grown
        self.array[layer, :, at : at + new] = x.detach().to(self.dtype).cpu().numpy()
        self.filled[layer] = at + new

    def take(self, layer: int) -> np.ndarray:
        """The positions `layer` holds: a view while little capacity went unused, else a trimmed copy."""
        view = self.array[layer, :, : self.filled[layer]]
        return view if 4 * view.shape[1] >= 3 * self.array.shape[2] else view.copy()


_NUMPY = {torch.float16: np.float16, torch.float32: np.float32}


class AttentionRecorder:
    """Collects, layer by layer, what each forward pass gives: new queries and keys, or weights.

    `capacity` is how many positions the run will cover (prompt + new tokens) and `n_layers` how many layers,
    so that queries and keys go straight into preallocated arrays; the peak memory of a capture is then the plain
    run's plus the trace itself.
    """

    def __init__(self, precision: torch.dtype = torch.float16, keep_values: bool = False, capacity: int = 0,
                 n_layers: int = 0):
        self.precision = precision
        self.keep_values = keep_values
        self.layer_of: dict[int, int] = {}  # id(module) -> layer index, in the order layers first run
        self.queries = PositionStore(precision, capacity, n_layers)
        self.keys = PositionStore(precision, capacity, n_layers)
        self.values = PositionStore(precision, capacity, n_layers)
        self.weights: dict[int, list[torch.Tensor]] = {}
        self.layer_meta: dict[int, dict] = {}

    def _layer(self, module: torch.nn.Module) -> int:
        return self.layer_of.setdefault(id(module), len(self.layer_of))

    def record_query_key(self, module, query, key, value, kwargs) -> None:
        unsupported = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
        if unsupported:
            raise NotImplementedError(
                f"{type(module).__name__} uses {', '.join(unsupported)}, which attention-explorer cannot replay yet"
            )
        layer = self._layer(module)
        new = query.shape[2]  # the cache already holds earlier keys: the new ones are the last `new`
        self.queries.append(layer, query[0])
        self.keys.append(layer, key[0, :, -new:])
        if self.keep_values:
            self.values.append(layer, value[0, :, -new:])
        if layer not in self.layer_meta:
            scaling = kwargs.get("scaling")
            self.layer_meta[layer] = {
                "scaling": float(query.shape[-1] ** -0.5 if scaling is None else scaling),
                "sliding_window": kwargs.get("sliding_window"),
                "softcap": kwargs.get("softcap"),
            }

    def record_weights(self, module, weights: torch.Tensor) -> None:
        layer = self._layer(module)
        self.weights.setdefault(layer, []).append(weights.detach()[0].to(self.precision))

    def layers(self, n_tokens: int) -> list:
        """The recorded layers as Trace storage, checked to cover exactly n_tokens positions."""
        out = []
        for layer in range(len(self.layer_of)):
            if layer in self.queries.filled:
                query = self.queries.take(layer)
                key = self.keys.take(layer)
                value = self.values.take(layer) if self.keep_values else None
                if query.shape[1] != n_tokens:
                    raise RuntimeError(f"layer {layer} recorded {query.shape[1]} positions, expected {n_tokens}")
                out.append(QueryKeyLayer(query=query, key=key, value=value, **self.layer_meta[layer]))
            else:
                out.append(WeightsLayer(packed=_pack_rows(self.weights[layer], n_tokens)))
        return out


def _pack_rows(chunks: list[torch.Tensor], n_tokens: int) -> np.ndarray:
    """Concatenate weight chunks [H, q, kv] (one per forward pass) into packed causal rows [H, T(T+1)/2]."""
    heads = chunks[0].shape[0]
    packed = np.zeros((heads, n_tokens * (n_tokens + 1) // 2), dtype=np.dtype(str(chunks[0].dtype).split(".")[-1]))
    row = 0
    for chunk in chunks:
        chunk = chunk.cpu().numpy()
        for r in range(chunk.shape[1]):
            offset = row * (row + 1) // 2
            packed[:, offset : offset + row + 1] = chunk[:, r, : row + 1]
            row += 1
    if row != n_tokens:
        raise RuntimeError(f"recorded {row} attention rows, expected {n_tokens}")
    return packed


def _original_attention(module: torch.nn.Module, name: str):
    """The attention function the model would use under implementation `name`."""
    if name in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[name]
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise RuntimeError(f"cannot find the eager attention of {type(module).__name__}")
    return eager


def _capturing_attention(module, query, key, value, attention_mask, **kwargs):
    recorder = _active.get()
    inner = getattr(module.config, "_attention_explorer_inner", "sdpa")
    output = _original_attention(module, inner)(module, query, key, value, attention_mask, **kwargs)
    if recorder is not None:
        recorder.record_query_key(module, query, key, value, kwargs)
    return output


def _capturing_mask(*args, **kwargs):
    inner = kwargs.get("config") and getattr(kwargs["config"], "_attention_explorer_inner", "sdpa")
    return ALL_MASK_ATTENTION_FUNCTIONS[inner if inner in ALL_MASK_ATTENTION_FUNCTIONS else "sdpa"](*args, **kwargs)


AttentionInterface.register(IMPLEMENTATION, _capturing_attention)
AttentionMaskInterface.register(IMPLEMENTATION, _capturing_mask)


def uses_attention_interface(model) -> bool:
    """Whether the model dispatches its attention through transformers' AttentionInterface."""
    return bool(getattr(model, "_supports_attention_backend", False))


def attention_modules(model) -> list[torch.nn.Module]:
    """The outermost attention module of each layer, in order (for models outside the interface)."""
    found: list[torch.nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside:
            continue
        if type(module).__name__.endswith("Attention"):
            found.append(module)
            inside.update(id(m) for m in module.modules())
    return found


@contextmanager
def recording(model, recorder: AttentionRecorder):
    """Run the model with `recorder` collecting attention; the model is left as it was afterwards."""
    token = _active.set(recorder)
    handles = []
    previous = model.config._attn_implementation
    try:
        if uses_attention_interface(model):
            if previous != IMPLEMENTATION:
                # keep the model's own implementation for the output; record beside it
                model.config._attention_explorer_inner = previous if previous in ALL_ATTENTION_FUNCTIONS else "eager"
                model.set_attn_implementation(IMPLEMENTATION)
        else:
            for module in attention_modules(model):
                handles.append(module.register_forward_hook(_weights_hook(recorder)))
            if not handles:
                raise RuntimeError(f"found no attention modules in {type(model).__name__}")
        yield recorder
    finally:
        _active.reset(token)
        for handle in handles:
            handle.remove()
        if uses_attention_interface(model) and previous != IMPLEMENTATION:
            model.set_attn_implementation(previous)
            del model.config._attention_explorer_inner


def _weights_hook(recorder: AttentionRecorder):
    def hook(module, args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
            raise RuntimeError(
                f"{type(module).__name__} returned no attention weights; load the model with attn_implementation='eager'"
            )
        recorder.record_weights(module, weights)

    return hook
