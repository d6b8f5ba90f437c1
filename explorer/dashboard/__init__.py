"""The dashboard: prompt box, settings and the full explorer in one page, served by Voilà."""

from .app import Dashboard

__all__ = ["Dashboard"]
