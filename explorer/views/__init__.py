"""Views: each takes a Trace (live or loaded from a file) and draws it. Nothing here imports torch.

    from explorer import views
    views.heatmap(trace, layer=3, head=2)
    views.stepper(trace)
"""

from importlib import import_module

from .selection import Selection

# name -> module that defines it; imported on first use so `import explorer.views` stays light
_LAZY = {
    "heatmap": ".heatmap",
    "HeatmapView": ".heatmap",
    "heads_map": ".heads_map",
    "HeadsMapView": ".heads_map",
    "stepper": ".stepper",
    "StepperView": ".stepper",
    "probability_chart": ".probabilities",
    "entropy_chart": ".probabilities",
    "positional": ".positional",
    "head_view": ".bertviz_offline",
    "model_view": ".bertviz_offline",
    "to_json": ".export",
    "standalone_html": ".export",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'explorer.views' has no attribute {name!r}")


__all__ = ["Selection", *_LAZY]
