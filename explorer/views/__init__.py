"""Views: each takes a Trace (live or loaded from a file) and draws it. Nothing here imports torch.

    from explorer import views
    views.heatmap(trace, layer=3, head=2)
    views.stepper(trace)
"""

# Modules are named *_view so that `views.heatmap` is always the function, never a submodule of that name.
from .attention_math import AttentionMathView, attention_math
from .bertviz_offline import head_view, head_view_html, model_view, model_view_html
from .explorer_view import ExplorerView, show
from .export import standalone_html, to_json
from .heads_map_view import HeadsMapView, heads_map
from .heatmap_view import HeatmapView, heatmap
from .positional_view import positional
from .probabilities import entropy_chart, probability_chart
from .selection import Selection
from .stepper_view import StepperView, stepper

__all__ = [
    "AttentionMathView",
    "ExplorerView",
    "HeadsMapView",
    "HeatmapView",
    "Selection",
    "StepperView",
    "attention_math",
    "entropy_chart",
    "head_view",
    "head_view_html",
    "heatmap",
    "heads_map",
    "model_view",
    "model_view_html",
    "positional",
    "probability_chart",
    "show",
    "standalone_html",
    "stepper",
    "to_json",
]
