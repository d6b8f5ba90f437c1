"""How position reaches each attention layer, measured from what the model does.

A model whose attention is relative (rotary, ALiBi, none) computes the same residual stream when every position id
is shifted by the same amount. So one probe text read twice, at positions 0.. and at S.., gives each layer's keys
(as the attention function receives them) twice: a layer that rotates has keys that differ by exactly its rotation,
which un-rotating with the right table (base, rotary dims, pairing of dimensions) undoes; a NoPE layer has the same
keys both times. ALiBi slopes are read from the bias each attention module is handed. Where a layer cannot be
measured (its weights are recorded by hooks, or the stream is not shift-invariant), the config's declaration is
used (`layer_types`, `no_rope_layers`, per-layer-type `rope_parameters`) and `evidence` says so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..rotary import unrotate
from .shapes import text_config


PROBE = [1, 2, 3, 4, 5, 6, 7, 8]
SHIFT = 11
CONVENTIONS = ("half", "interleaved")  # rotate_half (Llama, NeoX) or pairs of neighbours (GPT-J, Llama 4)


def _half_layout(out) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [T, r] in rotate_half layout (frequencies repeated twice) from a rotary module's output."""
    if isinstance(out, torch.Tensor) and out.is_complex():  # Llama 4: one complex freqs_cis [.., T, r/2]
        angles = out.reshape(-1, out.shape[-1])
        cos, sin = angles.real, angles.imag
        return torch.cat([cos, cos], -1).float(), torch.cat([sin, sin], -1).float()
    cos, sin = (t.reshape(-1, t.shape[-1]).float() for t in out)
    width = cos.shape[-1]
    if width % 2 == 0 and torch.allclose(cos[:, : width // 2], cos[:, width // 2 :]):
        cos, sin = cos[:, : width // 2], sin[:, : width // 2]  # already rotate-half: each frequency twice
    elif width % 2 == 0 and torch.allclose(cos[:, 0::2], cos[:, 1::2]):
        cos, sin = cos[:, 0::2], sin[:, 0::2]  # each frequency twice side by side (Cohere)
    return torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)  # else: one column a frequency (GPT-OSS)


def rotary_tables(model) -> list[tuple[dict, Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]]]:
    """Every rotary table the model can make: (its parameters, fn(start, n) -> cos, sin [n, r] in half layout)."""
    out = []
    config = text_config(model)
    device = next(model.parameters()).device
    for module in model.modules():
        if "Rotary" not in type(module).__name__:
            continue
        layer_types = [None]
        if not isinstance(getattr(module, "inv_freq", None), torch.Tensor):
            layer_types = [t for t in getattr(module, "layer_types", []) if hasattr(module, f"{t}_inv_freq")]
        for layer_type in layer_types:
            inv_freq = getattr(module, "inv_freq" if layer_type is None else f"{layer_type}_inv_freq")
            rope = dict(getattr(config, "rope_parameters", None) or {})
            rope = rope.get(layer_type, rope) if layer_type else rope
            rope_type = getattr(module, "rope_type", "default")
            params = {"theta": rope.get("rope_theta"), "rope_type": rope_type.get(layer_type, "default")
                      if isinstance(rope_type, dict) else rope_type,
                      "inv_freq": inv_freq.float().cpu().numpy(), "layer_type": layer_type}

            def table(start, n, module=module, layer_type=layer_type):
                positions = torch.arange(start, start + n, device=device)[None, :]
                probe = torch.zeros(1, dtype=torch.float32, device=device)
                args = (probe, positions) if layer_type is None else (probe, positions, layer_type)
                return _half_layout(module(*args))

            out.append((params, table))
    if not out:  # rotary applied inside attention without a module of its own (GPT-J's rotary_dim)
        r = getattr(config, "rotary_dim", None)
        if isinstance(r, int) and r > 0:
            theta = float((getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0))
            inv_freq = 1.0 / theta ** (torch.arange(0, r, 2, dtype=torch.float32) / r)

            def table(start, n, inv_freq=inv_freq):
                angles = torch.arange(start, start + n, dtype=torch.float32)[:, None] * inv_freq[None, :]
                angles = torch.cat([angles, angles], -1)
                return angles.cos(), angles.sin()

            out.append(({"theta": theta, "rope_type": "default", "inv_freq": inv_freq.numpy(), "layer_type": None},
                        table))
    return out


def _keys_and_biases(model, positions: list[int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Each layer's keys [H_kv, P, d] for the probe at `positions`, and the ALiBi-like bias each attention module was
    handed (BLOOM's alibi, MPT's position_bias) as slopes [H]."""
    from .attention import AttentionRecorder, attention_modules, model_heads, recording

    recorder = AttentionRecorder(torch.float32, capacity=len(PROBE), n_layers=0)
    slopes: dict[int, np.ndarray] = {}
    modules = attention_modules(model)

    def handed(module, args, kwargs, index):
        bias = kwargs.get("alibi", kwargs.get("position_bias"))
        if isinstance(bias, torch.Tensor) and bias.shape[-1] >= 2 and index not in slopes:
            rows = bias.detach().float().reshape(-1, bias.shape[-1])
            slopes[index] = (rows[:, -1] - rows[:, -2])[: model_heads(module)].cpu().numpy()

    handles = [m.register_forward_pre_hook(lambda m, a, k, i=i: handed(m, a, k, i), with_kwargs=True)
               for i, m in enumerate(modules)]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode(), recording(model, recorder):
            model(input_ids=torch.tensor([PROBE], device=device), use_cache=False,
                  position_ids=torch.tensor([positions], device=device))
    finally:
        for handle in handles:
            handle.remove()
    keys = {layer: recorder.keys.take(layer).copy() for layer in recorder.keys.filled}
    return keys, slopes


def _declared(config, layer: int) -> dict:
    """What the config says of layer `layer`: uses rotary or not, and its layer type."""
    out: dict = {}
    types = getattr(config, "layer_types", None)
    if isinstance(types, list) and layer < len(types):
        out["layer_type"] = types[layer]
    no_rope = getattr(config, "no_rope_layers", None)  # SmolLM3, Llama 4: 1 = this layer uses rotary
    if isinstance(no_rope, list) and layer < len(no_rope):
        out["rotary"] = bool(no_rope[layer])
    return out


def probe_layers(model, absolute: str | None) -> list[dict]:
    """One record a layer: {"kind": "rotary" | "alibi" | "none" | "absolute", "evidence": "measured" |
    "declared", and its parameters: table, rotary_dim, convention, theta, rope_type, slopes, layer_type}."""
    config = text_config(model)
    try:
        keys_a, slopes = _keys_and_biases(model, list(range(len(PROBE))))
        keys_b, _ = _keys_and_biases(model, list(range(SHIFT, SHIFT + len(PROBE))))
    except Exception:  # a model that takes no position_ids: the declaration alone
        keys_a, keys_b, slopes = {}, {}, {}
    tables = rotary_tables(model)
    computed = []
    for params, table in tables:  # each table at both probe offsets, as numpy, once for all layers
        try:
            computed.append((params, *([t.cpu().numpy() for t in table(start, len(PROBE))] for start in (0, SHIFT))))
        except Exception:  # a rotary module called in a way we do not know: its layers stay unmeasured
            computed.append((params, None, None))
    n_layers = len(keys_a) or len(slopes) or getattr(config, "num_hidden_layers", 0)
    out = []
    for layer in range(n_layers):
        record = {"evidence": "declared"} | _declared(config, layer)
        if layer in slopes:
            record |= {"kind": "alibi", "slopes": [float(s) for s in slopes[layer]], "evidence": "measured"}
        elif layer in keys_a:
            record |= _measured(keys_a[layer], keys_b[layer], computed, absolute)
        else:
            record |= _fallback(record, computed, absolute)
        out.append(record)
    return out


def _measured(k_a: np.ndarray, k_b: np.ndarray, computed, absolute: str | None) -> dict:
    """A layer's kind from its keys at positions 0.. and SHIFT.. of the same probe."""
    tolerance = 1e-4 * max(1.0, float(np.abs(k_a).max()))
    if np.allclose(k_a, k_b, atol=tolerance):
        return {"kind": "none", "evidence": "measured"}
    for index, (params, table_a, table_b) in enumerate(computed):
        if table_a is None:
            continue
        (cos_a, sin_a), (cos_b, sin_b) = table_a, table_b
        if cos_a.shape[-1] > k_a.shape[-1]:
            continue
        for convention in CONVENTIONS:
            if np.allclose(unrotate(k_a, cos_a, sin_a, convention), unrotate(k_b, cos_b, sin_b, convention),
                           atol=tolerance):
                return {"kind": "rotary", "evidence": "measured", "table": index, "rotary_dim": int(cos_a.shape[-1]),
                        "convention": convention, "theta": params["theta"], "rope_type": params["rope_type"],
                        "attention_scaling": float(np.hypot(cos_a[0, 0], sin_a[0, 0]))}
    if absolute:
        return {"kind": "absolute", "evidence": "measured"}
    return {"kind": "unknown", "evidence": "measured"}


def _fallback(record: dict, computed, absolute: str | None) -> dict:
    """A layer that could not be measured: rotary if the config says so (or the model has one table), else
    absolute if positions are added at the input, else none."""
    usable = [i for i, (_, table_a, _) in enumerate(computed) if table_a is not None]
    if usable and record.get("rotary", True):
        layer_type = record.get("layer_type")
        index = next((i for i in usable if computed[i][0]["layer_type"] == layer_type), usable[0])
        params = computed[index][0]
        return {"kind": "rotary", "table": index, "rotary_dim": 2 * len(params["inv_freq"]), "convention": "half",
                "theta": params["theta"], "rope_type": params["rope_type"], "attention_scaling": 1.0}
    return {"kind": "absolute" if absolute else "none"}

