"""The generation service: one process per dashboard server holds the model and generates for every viewer.

    attention-explorer serve --bind tcp://127.0.0.1:5555        # the model side (a GPU box, by address)
    RemoteModel("tcp://127.0.0.1:5555").generate("Hello")        # the view side: a Trace, no torch here

The viewer side (`client`, `protocol`) imports no torch; only the server's worker thread does.
"""

from .client import RemoteModel
from .protocol import GenerationRequest, Limits, ServiceStatus

__all__ = ["GenerationRequest", "Limits", "RemoteModel", "ServiceStatus"]
