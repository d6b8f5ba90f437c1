"""What the user has selected, shared by every view of one explorer: layer, head, token and step."""

from __future__ import annotations

import traitlets


class Selection(traitlets.HasTraits):
    """One selection that several views observe and change; head None means the mean of the layer's heads."""

    layer = traitlets.Int(0)
    head = traitlets.Int(None, allow_none=True)
    token = traitlets.Int(None, allow_none=True)  # a position in the sequence, or None
    step = traitlets.Int(0)  # a generated step, 0-based
