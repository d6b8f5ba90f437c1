"""Capture: run a model with attention recording on and turn what it saw into a Trace."""


def __getattr__(name):
    # `explorer.capture.settings` is read on the view side too (the dashboard checks settings before it asks
    # the generation service): importing the package must not import torch
    if name == "LanguageModel":
        from .language_model import LanguageModel

        return LanguageModel
    raise AttributeError(f"module 'explorer.capture' has no attribute {name!r}")


__all__ = ["LanguageModel"]
