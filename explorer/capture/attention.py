"""Recording attention while a model runs.

Models that use transformers' AttentionInterface get one registered attention function that computes the
output with the model's own implementation (sdpa by default, so tokens are exactly those of plain
`generate`) and keeps the queries and keys it was given, after rotary. A head's weights are computed from
them later, when a view asks. Models outside the interface (GPT-Neo, ...) run eagerly with forward hooks
on their attention modules, which keep the weights themselves.
"""

from __future__ import annotations

import sys
import weakref
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
    """Every layer's queries (or keys, or values) of every batch row in one tensor [layers, rows, heads, capacity,
    d] on the model's device, filled position by position: no per-step tensors to concatenate, and nothing copied
    to the host until the run is over (`host`, once). One allocation, made at the first forward pass: per-layer
    buffers of a few MB landed between the forward pass's temporaries and fragmented the heap (+40 MB of peak at
    1,024 tokens on SmolLM2). On the CPU the host array is the same memory (no copy at all).

    The device copy keeps a 16-bit model's own dtype where the trace will hold float32 (exact, half the memory);
    otherwise it is kept in the trace's precision."""

    def __init__(self, dtype: torch.dtype, capacity: int, n_layers: int):
        self.dtype, self.capacity, self.n_layers = dtype, capacity, n_layers
        self.tensor: torch.Tensor | None = None
        self.array: np.ndarray | None = None
        self.filled: dict[int, int] = {}

    def append(self, layer: int, x: torch.Tensor) -> None:
        """Write x [rows, heads, new, d] (a forward pass's new positions) after what `layer` already holds."""
        rows, heads, new, dim = x.shape
        at = self.filled.get(layer, 0)
        if self.tensor is None:
            kept = x.dtype if x.dtype in (torch.float16, torch.bfloat16) and self.dtype == torch.float32 else self.dtype
            self.tensor = torch.empty((max(self.n_layers, layer + 1), rows, heads, max(self.capacity, new), dim),
                                      dtype=kept, device=x.device)
        if layer >= self.tensor.shape[0] or at + new > self.tensor.shape[3]:  # more than announced: grow (a copy)
            layers = self.tensor.shape[0] if layer < self.tensor.shape[0] else 2 * (layer + 1)
            positions = self.tensor.shape[3] if at + new <= self.tensor.shape[3] else 2 * (at + new)
            grown = self.tensor.new_empty((layers, rows, heads, positions, dim))
            grown[: self.tensor.shape[0], :, :, : self.tensor.shape[3]] = self.tensor
            self.tensor = grown
        self.tensor[layer, :, :, at : at + new].copy_(x.detach())  # on the device: no synchronisation
        self.filled[layer] = at + new

    def host(self) -> np.ndarray | None:
        """All of it as a numpy array in the trace's precision: the one device→host copy of a run (per layer, so
        that a conversion never doubles the device buffer)."""
        if self.array is None and self.tensor is not None:
            if self.tensor.device.type == "cpu" and self.tensor.dtype == self.dtype:
                self.array = self.tensor.numpy()
            else:
                self.array = np.empty(self.tensor.shape, dtype=_NUMPY[self.dtype])
                for layer in range(self.tensor.shape[0]):
                    self.array[layer] = self.tensor[layer].to(self.dtype).cpu().numpy()
            self.tensor = None
        return self.array

    def take(self, layer: int, row: int = 0, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Positions start..stop-1 of what `layer` holds for batch row `row` (start skips its left padding, stop
        drops what a row that ended early was fed after): a view while that is most of a one-row buffer, else a
        copy (a trace must not keep a batch's buffer alive)."""
        array = self.host()
        view = array[layer, row, :, start : self.filled[layer] if stop is None else stop]
        whole = array.shape[1] == 1 and 4 * view.shape[1] >= 3 * array.shape[3]
        return view if whole else view.copy()


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
        # layer -> (module, the values of every position it has read, heads): the norms wait for the run's end
        # (only where a KV cache holds those values anyway: `defer_norms`, set for generate)
        self.defer_norms = False
        self._values_seen: dict[int, tuple[torch.nn.Module, torch.Tensor, int]] = {}
        self._keep: dict[tuple, torch.Tensor] = {}  # (layer, dtype, device) -> 1 for a head kept, 0 for one off

    def _layer(self, module: torch.nn.Module) -> int:
        return self.layer_of.setdefault(id(module), len(self.layer_of))

    def record_query_key(self, module, query, key, value, kwargs) -> None:
        layer = self._layer(module)
        new = query.shape[2]  # the cache already holds earlier keys: the new ones are the last `new`
        tokens = self.keys.filled.get(layer, 0) + new
        if key.shape[2] > tokens:
            raise CaptureError(f"{type(module).__name__} attends over {key.shape[2]} keys for {tokens} tokens "
                               f"(compressed or extra keys), so its weights cannot be shown token by token")
        self.queries.append(layer, query)
        self.keys.append(layer, key[:, :, -new:])
        if self.keep_values:
            self.values.append(layer, value[:, :, -new:])
        self._defer_values(module, layer, value, new, query.shape[1])
        if layer not in self.layer_meta:
            scaling = kwargs.get("scaling")
            sinks = kwargs.get("s_aux", kwargs.get("sinks"))  # learned sink logits, one per head (GPT-OSS)
            self.layer_meta[layer] = {
                "scaling": float(query.shape[-1] ** -0.5 if scaling is None else scaling),
                "sliding_window": kwargs.get("sliding_window"),
                "softcap": kwargs.get("softcap"),
                # a tensor until the run is over: reading it now would wait for the device
                "sinks": None if sinks is None else sinks.detach().float().reshape(-1).clone(),
                "chunk": _chunk_size(module, kwargs),
            }

    def ablated(self, module, output: torch.Tensor) -> torch.Tensor:
        """The attention output [batch, new, H, d] with the ablated heads of this module's layer zeroed."""
        layer = self._layer(module)
        if layer not in self.ablate:
            return output
        key = (layer, output.dtype, output.device)
        if key not in self._keep:  # made once a layer: indexing a device tensor by a list copies from the host
            keep = torch.ones(output.shape[2], dtype=output.dtype)
            keep[self.ablate[layer]] = 0
            self._keep[key] = keep.to(output.device)
        return output * self._keep[key][:, None]

    def _defer_values(self, module, layer: int, value: torch.Tensor, new: int, n_heads: int) -> None:
        """The value norms of a pass's new positions, later where they can be: a dynamic KV cache hands attention the
        values of every position read so far (a new tensor each pass), so the last pass's tensor holds them all, and
        one product a layer after the run replaces one small product a layer and step (0.09 s of a 1.6 s batch of 8
        × 20 tokens). A layer handed fewer values than positions (a sliding window's cache) gets its norms now."""
        if self.defer_norms and value.shape[2] == self.keys.filled[layer]:  # every position: the cache's tensor
            self._values_seen[layer] = (module, value, n_heads)
            return
        self._flush_values(layer)
        self.record_values(module, value[:, :, -new:], n_heads)

    def _flush_values(self, layer: int) -> None:
        """The norms of the positions of `layer` whose values were kept for later."""
        if layer in self._values_seen:
            module, value, n_heads = self._values_seen.pop(layer)
            self.record_values(module, value[:, :, self.norms.filled.get(layer, 0) :], n_heads)

    def finish_values(self) -> None:
        """Compute the value norms kept for later (after the run: the tensors kept are then let go)."""
        for layer in list(self._values_seen):
            self._flush_values(layer)

    def record_values(self, module, value: torch.Tensor, n_heads: int) -> None:
        """Keep ‖v_j^h W_O^h‖ for the new positions of value [rows, H_kv, new, d]: what each position writes
        through each head (Kobayashi et al. 2020), from the Gram matrix of the head's slice of the output projection."""
        gram = self._gram(module, n_heads, value.shape[-1])
        if gram is None:
            return
        rows, groups, dim = value.shape[0], value.shape[1], value.shape[-1]
        v = value.float()[:, :, None]  # [rows, H_kv, 1, new, d]: each group's values serve its heads, no copy
        g = gram.reshape(groups, n_heads // groups, dim, dim)  # [H_kv, heads a group, d, d]
        squared = ((v @ g) * v).sum(-1).reshape(rows, n_heads, -1)  # v·G_h·vᵀ of each head and position
        self.norms.append(self._layer(module), squared.clamp_(min=0).sqrt_()[..., None])

    def _gram(self, module, n_heads: int, dim: int) -> torch.Tensor | None:
        if id(module) not in self._grams:
            self._grams[id(module)] = _head_grams(module, n_heads, dim)
        return self._grams[id(module)]

    def value_norms(self, n_tokens: int, row: int = 0, start: int = 0) -> np.ndarray | None:
        """float32 [layers, heads, n_tokens] of batch row `row` from position `start` (after its padding), or None
        unless every layer's were recorded."""
        self.finish_values()
        n_layers = len(self.layer_of)
        if self.norms.host() is None or any(self.norms.filled.get(layer, 0) < start + n_tokens
                                            for layer in range(n_layers)):
            return None
        return np.ascontiguousarray(self.norms.host()[:n_layers, row, :, start : start + n_tokens, 0])

    def record_weights(self, module, weights: torch.Tensor) -> None:
        layer = self._layer(module)
        self.weights.setdefault(layer, []).append(weights.detach().to(self.precision))

    def layers(self, n_tokens: int, row: int = 0, start: int = 0, precision: torch.dtype | None = None,
               total: int | None = None) -> list:
        """The recorded layers of batch row `row` as Trace storage: its positions start..start+n_tokens-1 (start
        skips its left padding; a row that ended early drops what came after), in `precision` (the recorder's own
        by default). Each layer is checked to have read exactly `total` positions, the run's (start + n_tokens
        unless given): a layer called twice a pass would hold twice as many."""
        kind = _NUMPY[precision or self.precision]
        total = start + n_tokens if total is None else total
        out = []
        for layer in range(len(self.layer_of)):
            if layer in self.queries.filled:
                if self.queries.filled[layer] != total or self.keys.filled[layer] != total:
                    raise CaptureError(f"attention layer {layer} was called for {self.queries.filled[layer]} queries "
                                       f"and {self.keys.filled[layer]} keys over {total} tokens (it attends more than "
                                       f"once a pass, or over extra keys), so its weights cannot be shown per token")
                stop = start + n_tokens
                query = self.queries.take(layer, row, start, stop)
                key = self.keys.take(layer, row, start, stop)
                value = self.values.take(layer, row, start, stop) if self.keep_values else None
                meta = self.layer_meta[layer]
                if isinstance(meta["sinks"], torch.Tensor):
                    meta["sinks"] = meta["sinks"].cpu().numpy()
                out.append(QueryKeyLayer(query=_as(query, kind), key=_as(key, kind),
                                         value=None if value is None else _as(value, kind), **meta))
            else:
                out.append(WeightsLayer(packed=_pack_rows([w[row] for w in self.weights[layer]], n_tokens, start)
                                        .astype(kind, copy=False)))
        return out


# attention module -> (its W_O's identity and version, heads, d, the Gram matrices): computed once a model, not once
# a run (30 products of [H, d, hidden] took 0.015 s of a 1.9 s batch); a changed W_O (a new tensor, or written in
# place, which bumps its version) is computed again
_GRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _head_grams(module, n_heads: int, dim: int) -> torch.Tensor | None:
    """W_O^h W_O^hᵀ of each head of `module`, [H, d, d] float32, or None without a matching output projection."""
    w = output_projection(module)
    if w is None or w.shape[0] != n_heads * dim:
        return None
    stamp = (w.data_ptr(), w._version, w.dtype, w.device, n_heads, dim)
    cached = _GRAMS.get(module)
    if cached is None or cached[0] != stamp:
        heads = w.detach().float().reshape(n_heads, dim, -1)  # [H, d, hidden]
        cached = _GRAMS[module] = (stamp, heads @ heads.transpose(1, 2))
    return cached[1]


def _as(array: np.ndarray, kind) -> np.ndarray:
    """`array` in numpy dtype `kind`, contiguous: itself when it already is (a view of a run's buffer)."""
    return array if array.dtype == kind else array.astype(kind)


def _pack_rows(chunks: list[torch.Tensor], n_tokens: int, start: int = 0) -> np.ndarray:
    """Concatenate weight chunks [H, q, kv] (one per forward pass) into packed causal rows [H, T(T+1)/2]. A chunk's
    rows are the last q of kv positions; a model without a KV cache (MPT) sends all rows again each pass. The first
    `start` positions (a batch row's left padding) are dropped, rows and keys; rows past n_tokens too (a batch row
    that ended early)."""
    heads = chunks[0].shape[0]
    packed = np.zeros((heads, n_tokens * (n_tokens + 1) // 2), dtype=np.dtype(str(chunks[0].dtype).split(".")[-1]))
    rows = 0
    for chunk in chunks:
        chunk = chunk.cpu().numpy()
        first = chunk.shape[2] - chunk.shape[1] - start  # the position of the chunk's first row, after padding
        if first + start < 0:
            raise CaptureError(f"an attention layer gave {chunk.shape[1]} rows over {chunk.shape[2]} keys")
        for r in range(max(0, -first), chunk.shape[1]):
            row = first + r
            if row >= n_tokens:
                break
            offset = row * (row + 1) // 2
            packed[:, offset : offset + row + 1] = chunk[:, r, start : start + row + 1]
            rows = max(rows, row + 1)
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
        heads = output.reshape(*output.shape[:2], n_heads, -1).transpose(1, 2)  # [rows, H, new, d]
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
