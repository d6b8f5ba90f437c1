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

from ..errors import CaptureError
from ..trace import QueryKeyLayer, WeightsLayer

IMPLEMENTATION = "attention_explorer"
# keyword arguments that change the attention weights and that QueryKeyLayer does not reproduce (relative position
# biases): such a layer's weights are recorded as its eager attention computes them
_UNSUPPORTED = ("position_bias", "alibi")

# names of the output projection W_O inside an attention module (Llama/Qwen, GPT-2, GPT-NeoX, GPT-Neo)
_OUTPUT_PROJECTIONS = ("o_proj", "c_proj", "dense", "out_proj")

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
                 n_layers: int = 0, ablate: list[tuple[int, int]] = ()):
        self.precision = precision
        self.ablate: dict[int, list[int]] = {}  # layer -> heads whose output is zeroed before W_O
        for layer, head in ablate:
            self.ablate.setdefault(layer, []).append(head)
        self.keep_values = keep_values
        self.layer_of: dict[int, int] = {}  # id(module) -> layer index, in the order layers first run
        self.queries = PositionStore(precision, capacity, n_layers)
        self.keys = PositionStore(precision, capacity, n_layers)
        self.values = PositionStore(precision, capacity, n_layers)
        self.weights: dict[int, list[torch.Tensor]] = {}
        self.layer_meta: dict[int, dict] = {}
        self.norms = PositionStore(torch.float32, capacity, n_layers)  # ‖v_j^h W_O^h‖, [layers, heads, T, 1]
        self._grams: dict[int, torch.Tensor | None] = {}  # id(module) -> W_O^h W_O^hᵀ of each head, [H, d, d]

    def _layer(self, module: torch.nn.Module) -> int:
        return self.layer_of.setdefault(id(module), len(self.layer_of))

    def record_query_key(self, module, query, key, value, kwargs) -> None:
        layer = self._layer(module)
        new = query.shape[2]  # the cache already holds earlier keys: the new ones are the last `new`
        tokens = self.keys.filled.get(layer, 0) + new
        if key.shape[2] > tokens:
            raise CaptureError(f"{type(module).__name__} attends over {key.shape[2]} keys for {tokens} tokens "
                               f"(compressed or extra keys), so its weights cannot be shown token by token")
        self.queries.append(layer, query[0])
        self.keys.append(layer, key[0, :, -new:])
        if self.keep_values:
            self.values.append(layer, value[0, :, -new:])
        self.record_values(module, value[0, :, -new:], query.shape[1])
        if layer not in self.layer_meta:
            scaling = kwargs.get("scaling")
            sinks = kwargs.get("s_aux", kwargs.get("sinks"))  # learned sink logits, one per head (GPT-OSS)
            self.layer_meta[layer] = {
                "scaling": float(query.shape[-1] ** -0.5 if scaling is None else scaling),
                "sliding_window": kwargs.get("sliding_window"),
                "softcap": kwargs.get("softcap"),
                "sinks": None if sinks is None else sinks.detach().float().reshape(-1).cpu().numpy(),
                "chunk": _chunk_size(module, kwargs),
            }

    def ablated(self, module, output: torch.Tensor) -> torch.Tensor:
        """The attention output [batch, new, H, d] with the ablated heads of this module's layer zeroed."""
        heads = self.ablate.get(self._layer(module))
        if not heads:
            return output
        keep = torch.ones(output.shape[2], dtype=output.dtype, device=output.device)
        keep[heads] = 0
        return output * keep[:, None]

    def record_values(self, module, value: torch.Tensor, n_heads: int) -> None:
        """Keep ‖v_j^h W_O^h‖ for the new positions of value [H_kv, new, d]: what each position writes through
        each head (Kobayashi et al. 2020), from the Gram matrix of the head's slice of the output projection."""
        gram = self._gram(module, n_heads, value.shape[-1])
        if gram is None:
            return
        groups, dim = value.shape[0], value.shape[-1]
        v = value.float()[:, None]  # [H_kv, 1, new, d]: each group's values serve its heads, with no copy
        g = gram.reshape(groups, n_heads // groups, dim, dim)  # [H_kv, heads a group, d, d]
        squared = ((v @ g) * v).sum(-1).reshape(n_heads, -1)  # v·G_h·vᵀ of each head and position, [H, new]
        self.norms.append(self._layer(module), squared.clamp_(min=0).sqrt_()[..., None])

    def _gram(self, module, n_heads: int, dim: int) -> torch.Tensor | None:
        if id(module) not in self._grams:
            w = output_projection(module)
            if w is None or w.shape[0] != n_heads * dim:
                self._grams[id(module)] = None
            else:
                heads = w.detach().float().reshape(n_heads, dim, -1)  # [H, d, hidden]
                self._grams[id(module)] = heads @ heads.transpose(1, 2)
        return self._grams[id(module)]

    def value_norms(self, n_tokens: int) -> np.ndarray | None:
        """float32 [layers, heads, n_tokens], or None unless every layer's were recorded."""
        n_layers = len(self.layer_of)
        if self.norms.array is None or any(self.norms.filled.get(layer) != n_tokens for layer in range(n_layers)):
            return None
        return np.ascontiguousarray(self.norms.array[:n_layers, :, :n_tokens, 0])

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
                if query.shape[1] != n_tokens or key.shape[1] != n_tokens:
                    raise CaptureError(f"attention layer {layer} was called for {query.shape[1]} queries and "
                                       f"{key.shape[1]} keys over {n_tokens} tokens (it attends more than once a "
                                       f"pass, or over extra keys), so its weights cannot be shown per token")
                out.append(QueryKeyLayer(query=query, key=key, value=value, **self.layer_meta[layer]))
            else:
                out.append(WeightsLayer(packed=_pack_rows(self.weights[layer], n_tokens)))
        return out


def _pack_rows(chunks: list[torch.Tensor], n_tokens: int) -> np.ndarray:
    """Concatenate weight chunks [H, q, kv] (one per forward pass) into packed causal rows [H, T(T+1)/2]. A chunk's
    rows are the last q of kv positions; a model without a KV cache (MPT) sends all rows again each pass."""
    heads = chunks[0].shape[0]
    packed = np.zeros((heads, n_tokens * (n_tokens + 1) // 2), dtype=np.dtype(str(chunks[0].dtype).split(".")[-1]))
    rows = 0
    for chunk in chunks:
        chunk = chunk.cpu().numpy()
        first = chunk.shape[2] - chunk.shape[1]
        if first < 0 or chunk.shape[2] > n_tokens:
            raise CaptureError(f"an attention layer gave {chunk.shape[1]} rows over {chunk.shape[2]} keys, which do "
                               f"not fit {n_tokens} tokens")
        for r in range(chunk.shape[1]):
            row = first + r
            offset = row * (row + 1) // 2
            packed[:, offset : offset + row + 1] = chunk[:, r, : row + 1]
        rows = max(rows, chunk.shape[2])
    if rows != n_tokens:
        raise CaptureError(f"recorded {rows} attention rows, expected {n_tokens}")
    return packed


def _output_projection_module(module: torch.nn.Module) -> torch.nn.Module | None:
    for name, child in module.named_modules():
        if name.rsplit(".", 1)[-1] in _OUTPUT_PROJECTIONS and (
            isinstance(child, torch.nn.Linear) or type(child).__name__ == "Conv1D"
        ):
            return child
    return None


def output_projection(module: torch.nn.Module) -> torch.Tensor | None:
    """W_O of an attention module as [heads·d, hidden] (what the merged heads are multiplied by), or None."""
    child = _output_projection_module(module)
    if child is None:
        return None
    return child.weight if type(child).__name__ == "Conv1D" else child.weight.T  # GPT-2's Conv1D: x @ weight


def value_projection(module: torch.nn.Module) -> torch.nn.Module | None:
    """The module computing an attention module's values on its own (GPT-Neo's v_proj), for the hooks path."""
    for name, child in module.named_modules():
        if name.rsplit(".", 1)[-1] == "v_proj" and isinstance(child, torch.nn.Linear):
            return child
    return None


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
    if recorder is not None and any(kwargs.get(name) is not None for name in _UNSUPPORTED):
        # a bias we do not replay: the layer's own eager attention gives output and weights, kept as they are
        output = _original_attention(module, "eager")(module, query, key, value, attention_mask, **kwargs)
        recorder.record_weights(module, output[1])
    else:
        output = _original_attention(module, inner)(module, query, key, value, attention_mask, **kwargs)
    if recorder is not None:
        if recorder.layer_of.get(id(module)) not in recorder.weights:
            recorder.record_query_key(module, query, key, value, kwargs)
        if recorder.ablate:  # heads off in a layer kept as weights too
            output = (recorder.ablated(module, output[0]), *output[1:])
    return output


def _capturing_mask(*args, **kwargs):
    inner = kwargs.get("config") and getattr(kwargs["config"], "_attention_explorer_inner", "sdpa")
    return ALL_MASK_ATTENTION_FUNCTIONS[inner if inner in ALL_MASK_ATTENTION_FUNCTIONS else "sdpa"](*args, **kwargs)


AttentionInterface.register(IMPLEMENTATION, _capturing_attention)
AttentionMaskInterface.register(IMPLEMENTATION, _capturing_mask)


def uses_attention_interface(model) -> bool:
    """Whether the model dispatches its attention through transformers' AttentionInterface: it says so, or its
    modeling code looks its attention function up there (several hybrid and older families do without saying)."""
    if getattr(model, "_supports_attention_backend", False):
        return True
    return getattr(sys.modules.get(type(model).__module__), "ALL_ATTENTION_FUNCTIONS", None) is not None


def _chunk_size(module, kwargs) -> int | None:
    """The chunk of a chunked-attention layer (Llama 4: a token sees the keys of its own chunk only), else None."""
    if kwargs.get("attention_chunk_size"):
        return int(kwargs["attention_chunk_size"])
    config, layer = getattr(module, "config", None), getattr(module, "layer_idx", None)
    types = getattr(config, "layer_types", None)
    if (isinstance(layer, int) and isinstance(types, list) and layer < len(types)
            and types[layer] == "chunked_attention"):
        return int(config.attention_chunk_size)
    return None


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
    asked = None  # the model's own output_attentions, while the hooks path sets it
    previous = model.config._attn_implementation
    try:
        if uses_attention_interface(model):
            if previous != IMPLEMENTATION:
                # keep the model's own implementation for the output; record beside it
                model.config._attention_explorer_inner = previous if previous in ALL_ATTENTION_FUNCTIONS else "eager"
                model.set_attn_implementation(IMPLEMENTATION)
        else:
            if previous != "eager":  # only eager attention modules give their weights to a hook
                model.set_attn_implementation("eager")
            asked = model.config.output_attentions
            model.config.output_attentions = True  # older modules return weights only when asked
            for module in attention_modules(model):
                handles.append(module.register_forward_hook(_weights_hook(recorder)))
                values = value_projection(module)
                if values is not None:
                    handles.append(values.register_forward_hook(_values_hook(recorder, module)))
                if recorder.ablate:
                    handles.append(_output_projection_module(module).register_forward_pre_hook(
                        _ablation_hook(recorder, module)))
            if not handles:
                raise CaptureError(f"found no attention modules in {type(model).__name__}, so its attention "
                                   f"cannot be recorded")
        yield recorder
    finally:
        _active.reset(token)
        for handle in handles:
            handle.remove()
        if asked is not None:
            model.config.output_attentions = asked
        if uses_attention_interface(model) and previous != IMPLEMENTATION:
            model.set_attn_implementation(previous)
            del model.config._attention_explorer_inner
        elif model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)


def _values_hook(recorder: AttentionRecorder, attention: torch.nn.Module):
    """Values [batch, new, H·d] from a v_proj, split into heads, recorded for `attention`'s layer."""
    n_heads = model_heads(attention)

    def hook(module, args, output):
        heads = output[0].reshape(output.shape[1], n_heads, -1).transpose(0, 1)  # [H, new, d]
        recorder.record_values(attention, heads, n_heads)

    return hook


def _ablation_hook(recorder: AttentionRecorder, attention: torch.nn.Module):
    """Zero the ablated heads' slices of the output projection's input (the merged heads [batch, new, H·d])."""
    n_heads = model_heads(attention)

    def hook(module, args):
        merged = args[0]
        heads = merged.reshape(*merged.shape[:-1], n_heads, -1)
        return (recorder.ablated(attention, heads).reshape(merged.shape), *args[1:])

    return hook


def model_heads(attention: torch.nn.Module) -> int:
    """How many heads an attention module (or the one inside it) has."""
    for module in attention.modules():
        for name in ("num_heads", "num_attention_heads", "n_head", "n_heads"):
            if isinstance(getattr(module, name, None), int):
                return getattr(module, name)
    config = getattr(attention, "config", None)
    if isinstance(getattr(config, "num_attention_heads", None), int):
        return config.num_attention_heads
    raise CaptureError(f"cannot tell how many heads {type(attention).__name__} has")


def _weights_hook(recorder: AttentionRecorder):
    def hook(module, args, output):
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
            raise CaptureError(
                f"{type(module).__name__} returned no attention weights even when run eagerly with "
                f"output_attentions, so its attention cannot be recorded"
            )
        recorder.record_weights(module, weights)

    return hook
