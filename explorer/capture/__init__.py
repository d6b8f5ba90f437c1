"""Capture: run a model with attention recording on and turn what it saw into a Trace."""

from .language_model import LanguageModel

__all__ = ["LanguageModel"]
