"""The positional encoding a model uses, layer by layer, with its arrays for positions 0..T-1."""

from __future__ import annotations

import torch

from ..trace import Positional
from .layer_positions import probe_layers, rotary_tables
from .shapes import head_dim, text_config

_LEARNED_NAMES = ("wpe", "position_embeddings", "embed_positions")


def _named_position_module(model: torch.nn.Module):
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in _LEARNED_NAMES and not hasattr(module, "inv_freq"):
            return module
    return None


def _absolute(model: torch.nn.Module, n_tokens: int) -> Positional | None:
    """Learned or sinusoidal positions added at the input, with their table for the positions, or None."""
    module = _named_position_module(model)
    if module is None:
        return None
    offset = int(getattr(module, "offset", 0))
    if "Sinusoidal" in type(module).__name__ and isinstance(getattr(module, "weights", None), torch.Tensor):
        table = module.weights[offset : offset + n_tokens]
        return Positional(
            kind="sinusoidal",
            arrays={"table": table.float().cpu().numpy()},
            params={"dim": table.shape[-1], "offset": offset},
            description=(
                "Sinusoidal: a fixed table, PE(pos, 2i) = sin(pos / 10000^(2i/d)) and PE(pos, 2i+1) = "
                "cos(pos / 10000^(2i/d)), added to the token embeddings."
            ),
        )
    if isinstance(module, torch.nn.Embedding):
        table = module.weight[offset : offset + n_tokens]
        return Positional(
            kind="learned",
            arrays={"embeddings": table.float().cpu().numpy()},
            params={"dim": table.shape[-1], "n_positions": module.num_embeddings - offset, "offset": offset},
            description=(
                "Learned: one trained vector per position (a row of the position-embedding matrix), "
                "added to the token embedding before the first layer."
            ),
        )
    return None


@torch.no_grad()
def probe_positions(model: torch.nn.Module) -> list[dict]:
    """Each attention layer's treatment of position, measured once per model (see layer_positions)."""
    absolute = _absolute(model, 1)
    return probe_layers(model, absolute.kind if absolute else None)


@torch.no_grad()
def read_positional(model: torch.nn.Module, n_tokens: int, layers: list[dict] | None = None) -> Positional:
    """The model's positional encoding for positions 0..n_tokens-1, per layer (`layers` from probe_positions)."""
    layers = probe_positions(model) if layers is None else layers
    absolute = _absolute(model, n_tokens)
    kinds = {layer["kind"] for layer in layers}
    arrays, params = (dict(absolute.arrays), dict(absolute.params)) if absolute else ({}, {})
    used = sorted({layer["table"] for layer in layers if layer["kind"] == "rotary"})
    tables = rotary_tables(model)
    renumbered = {old: new for new, old in enumerate(used)}
    config = text_config(model)
    dim = head_dim(config)
    for old, new in renumbered.items():
        table_params, table = tables[old]
        cos, sin = table(0, n_tokens)
        suffix = "" if new == 0 else f"_{new}"
        arrays |= {f"cos{suffix}": cos.cpu().numpy(), f"sin{suffix}": sin.cpu().numpy(),
                   f"inv_freq{suffix}": table_params["inv_freq"]}
    per_layer = []
    for layer in layers:
        record = dict(layer)
        if record["kind"] == "rotary":
            record["table"] = renumbered[record["table"]]
            record["head_dim"] = dim
        per_layer.append(record)
    rotary = next((layer for layer in per_layer if layer["kind"] == "rotary"), None)
    if rotary is not None:
        params |= {"head_dim": dim, "rotary_dim": rotary["rotary_dim"], "rotary_fraction": rotary["rotary_dim"] / dim,
                   "theta": rotary["theta"], "rope_type": rotary["rope_type"],
                   "attention_scaling": rotary["attention_scaling"]}
    kind = _model_kind(kinds, absolute)
    return Positional(kind=kind, arrays=arrays, params=params, description=_describe(kind, per_layer, absolute),
                      layers=per_layer)


def _model_kind(kinds: set[str], absolute: Positional | None) -> str:
    if kinds == {"absolute"} or (absolute is not None and kinds <= {"absolute", "none"}):
        return absolute.kind if absolute else "none"
    if len(kinds) == 1:
        return next(iter(kinds)) if kinds != {"unknown"} else "none"
    return "mixed"


def _describe(kind: str, layers: list[dict], absolute: Positional | None) -> str:
    if kind in ("learned", "sinusoidal"):
        return absolute.description
    if kind == "rotary":
        r, dim = layers[0].get("rotary_dim"), layers[0].get("head_dim")
        thetas = sorted({f"{layer['theta']:g}" for layer in layers if layer.get("theta")})
        bases = f" with base {' and '.join(thetas)}" if thetas else ""
        return (f"Rotary (RoPE){bases}: each query and key is rotated by an angle position × frequency in "
                f"{r // 2} planes ({r} of {dim} dimensions per head), so q·k depends on the distance between two "
                f"tokens, not on where they stand.")
    if kind == "alibi":
        return ("ALiBi: no position vectors at all; each head adds slope × distance (a negative slope of its own) to "
                "its scores, so far tokens are pushed down, more in some heads than in others.")
    if kind == "none":
        return "No positional encoding was found: order reaches the model only through the causal mask."
    counts = {}
    for layer in layers:
        counts[layer["kind"]] = counts.get(layer["kind"], 0) + 1
    names = {"none": "NoPE", "absolute": "absolute-position"}
    listed = ", ".join(f"{n} {names.get(k, k)}" for k, n in counts.items())
    return (f"Layers differ ({listed} layers): pick a layer in the strip to see how position reaches it. NoPE layers "
            f"see order only through the causal mask and what earlier layers wrote.")
