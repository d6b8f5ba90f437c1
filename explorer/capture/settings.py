"""Checking a prompt and generation settings before any work, with one clear sentence for each mistake."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral, Real

from ..errors import SettingsError


@dataclass(frozen=True)
class GenerationSettings:
    """The decoding settings of one generation, checked. temperature 0 means greedy."""

    max_new_tokens: int = 20
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, Integral):
            raise SettingsError(f"max_new_tokens must be a whole number, not {self.max_new_tokens!r}")
        if self.max_new_tokens <= 0:
            raise SettingsError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if not isinstance(self.temperature, Real) or not math.isfinite(self.temperature) or self.temperature < 0:
            raise SettingsError(f"temperature must be a finite number ≥ 0 (0 = greedy), not {self.temperature!r}")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, Integral) or self.top_k < 1
        ):
            raise SettingsError(f"top_k must be a whole number ≥ 1 or None, not {self.top_k!r}")
        if self.top_p is not None and (
            not isinstance(self.top_p, Real) or not math.isfinite(self.top_p) or not 0 < self.top_p <= 1
        ):
            raise SettingsError(f"top_p must be in (0, 1] or None, not {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, Integral)):
            raise SettingsError(f"seed must be a whole number or None, not {self.seed!r}")
        if self.greedy and (self.top_k is not None or self.top_p is not None):
            raise SettingsError("top_k and top_p only apply when sampling: set a temperature > 0 to use them")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self) -> dict:
        """The keyword arguments for transformers' `generate` that mean exactly these settings."""
        if self.greedy:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": float(self.temperature),
            "top_k": 0 if self.top_k is None else int(self.top_k),  # 0 switches top-k off
            "top_p": 1.0 if self.top_p is None else float(self.top_p),
        }

    def as_dict(self) -> dict:
        return asdict(self)

    def check_extra(self, extra: dict) -> None:
        """Refuse extra `generate` keywords that would decode otherwise than these settings say."""
        if "do_sample" not in extra:
            return
        do_sample = extra["do_sample"]
        if not isinstance(do_sample, bool):
            raise SettingsError(f"do_sample must be True or False, not {do_sample!r}")
        if do_sample and self.greedy:
            raise SettingsError("do_sample=True contradicts temperature=0 (greedy): set a temperature > 0 to sample")
        if not do_sample and not self.greedy:
            raise SettingsError(
                f"do_sample=False contradicts temperature={self.temperature} (sampling): "
                "set temperature=0 to decode greedily"
            )


def check_length(n_prompt: int, max_new_tokens: int, context: int | None, model_name: str) -> None:
    """Refuse an empty prompt, or one that with the new tokens would not fit the model's context."""
    if n_prompt == 0:
        raise SettingsError("the prompt is empty: type some text")
    if context is None:
        return
    if n_prompt > context:
        raise SettingsError(f"the prompt has {n_prompt} tokens but {model_name} reads at most {context}")
    if n_prompt + max_new_tokens > context:
        raise SettingsError(
            f"max_new_tokens={max_new_tokens} is too many: the prompt has {n_prompt} tokens and {model_name} "
            f"reads at most {context}, so at most {context - n_prompt} new tokens fit"
        )
