"""attention-explorer: look inside a GPT while it writes.

    import explorer
    lm = explorer.load_model()                      # embedded SmolLM2-135M-Instruct, offline
    trace = lm.generate("The capital of France is", max_new_tokens=12)
    trace.attention(layer=3, head=2)                # numpy [T, T]
    trace.save("paris.trace"); explorer.load_trace("paris.trace")
"""

from . import whatif  # noqa: F401  (explorer.whatif: branch_request, graft, rescore; torch-free)
from .atlas import HeadAtlasOverTexts, head_atlas, repeated_random_tokens
from .errors import ExplorerError, MissingDataError, ModelLoadError, SelectionError, SettingsError, TraceFileError
from .trace import Candidate, LogitLens, Positional, Step, Trace, save_traces
from .trace_file import load_trace, load_traces

__version__ = "0.1.0"


def show(trace: Trace, lm=None):
    """Open the full explorer of a trace (tabs of every view, one shared selection); with the model `lm`,
    clicking a candidate branches and heads can be switched off."""
    from .views.explorer_view import show as _show

    return _show(trace, lm=lm)


def compare(a: Trace, b: Trace, layer: int = 0, head: int | None = None, **kwargs):
    """Two traces side by side: their attention over aligned positions, A − B, and where their choices differ."""
    from .views.whatif.compare_view import compare as _compare

    return _compare(a, b, layer=layer, head=head, **kwargs)


def __getattr__(name):
    # the model side imports torch and transformers: only when it is asked for, so views load fast
    if name in {"load_model", "wrap", "LanguageModel"}:
        from . import models

        return {"load_model": models.load_model, "wrap": models.wrap, "LanguageModel": models.LanguageModel}[name]
    raise AttributeError(f"module 'explorer' has no attribute {name!r}")


__all__ = [
    "Candidate",
    "ExplorerError",
    "HeadAtlasOverTexts",
    "LanguageModel",
    "LogitLens",
    "MissingDataError",
    "ModelLoadError",
    "Positional",
    "SelectionError",
    "SettingsError",
    "Step",
    "Trace",
    "TraceFileError",
    "compare",
    "head_atlas",
    "load_model",
    "load_trace",
    "load_traces",
    "repeated_random_tokens",
    "save_traces",
    "show",
    "wrap",
]
