"""What a trace says of the model that made it: one typed record, written by the model side, read by the views,
the dashboard and the command line, and kept in the trace file's header."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ModelFacts:
    """Name, sizes, heads, positional encoding and where the model ran. A field a file does not hold is None."""

    name: str | None = None
    architecture: str | None = None  # the transformers class, e.g. LlamaForCausalLM
    model_type: str | None = None  # config.model_type, e.g. llama
    parameters: int | None = None
    layers: int | None = None
    heads: int | None = None  # query heads
    kv_heads: int | None = None  # key/value heads (fewer than heads with grouped-query attention)
    hidden_size: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    positional: str | None = None  # learned, sinusoidal, rotary or none
    capture: str | None = None  # "attention interface", "hooks" or "textbook"
    device: str | None = None
    dtype: str | None = None
    chat_template: bool | None = None

    @classmethod
    def from_dict(cls, values: dict | None) -> ModelFacts:
        """The record of a header's or a status's dict; keys it does not know are passed over (a newer writer)."""
        values = values or {}
        if not isinstance(values, dict):
            raise ValueError(f"the model's facts must be a JSON object, not {type(values).__name__}")
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def to_dict(self) -> dict:
        return asdict(self)

    def describe_heads(self) -> str:
        """'9 query / 3 key-value' with grouped-query attention, else the number of heads."""
        if self.kv_heads and self.kv_heads != self.heads:
            return f"{self.heads} query / {self.kv_heads} key-value"
        return str(self.heads)
