"""Views: each takes a Trace (live or loaded from a file) and draws it. Nothing here imports torch.

    from explorer import views
    views.heatmap(trace, layer=3, head=2)
    views.stepper(trace)

Each name is imported when first used: a dashboard kernel that shows only the stepper never loads plotly or
bertviz's helpers (tens of MB a kernel, thirty kernels in a class).
"""

# Where each name lives: a folder per group of the dashboard's tabs (attention, steps, meaning, whatif, positions),
# beside them explorer_view (the tabs), selection and export, and frontend (what the views' front ends share).
# The modules sit in those folders, so `views.heatmap` or `views.head_atlas` is always the function, never a module.
_WHERE = {
    "AttentionMathView": "attention.attention_math",
    "AttributionView": "meaning.attribution_view",
    "attribution": "meaning.attribution_view",
    "attention_math": "attention.attention_math",
    "BranchTree": "whatif.branch_tree",
    "ContributionView": "meaning.contribution_view",
    "contribution": "meaning.contribution_view",
    "head_view": "attention.bertviz_offline",
    "head_view_html": "attention.bertviz_offline",
    "model_view": "attention.bertviz_offline",
    "model_view_html": "attention.bertviz_offline",
    "CompareView": "whatif.compare_view",
    "compare": "whatif.compare_view",
    "ExplorerView": "explorer_view",
    "show": "explorer_view",
    "standalone_html": "export",
    "to_json": "export",
    "HeadAtlasView": "meaning.head_atlas",
    "head_atlas": "meaning.head_atlas",
    "HeadsMapView": "attention.heads_map_view",
    "heads_map": "attention.heads_map_view",
    "HeatmapView": "attention.heatmap_view",
    "heatmap": "attention.heatmap_view",
    "LensView": "meaning.lens_view",
    "lens": "meaning.lens_view",
    "positional": "positions.positional_view",
    "CommitmentStrip": "meaning.commitment_view",
    "commitment_strip": "meaning.commitment_view",
    "QueryKeyView": "meaning.query_key_view",
    "query_key": "meaning.query_key_view",
    "entropy_chart": "steps.probabilities",
    "probability_chart": "steps.probabilities",
    "read_text": "steps.read_text_view",
    "Selection": "selection",
    "StepCharts": "steps.step_charts",
    "StepperView": "steps.stepper_view",
    "stepper": "steps.stepper_view",
    "WhatIfPanel": "whatif.whatif_panel",
}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'explorer.views' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # found once; later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = sorted(_WHERE)
