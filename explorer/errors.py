"""The errors attention-explorer raises: each says what went wrong in one sentence."""


class ExplorerError(Exception):
    """Base class of every error of ours."""


class ModelLoadError(ExplorerError, OSError):
    """A model could not be found or loaded, or is not a causal language model."""


class SettingsError(ExplorerError, ValueError):
    """A prompt or a generation setting is out of range."""


class TraceFileError(ExplorerError, ValueError):
    """A file is not a trace we can read: truncated, corrupted, foreign or from a future version."""


class KeyFileError(ExplorerError, ValueError):
    """The generation service's key file is unreadable, corrupt, or readable by other users."""


class ServiceError(ExplorerError):
    """The generation service did not answer, stopped answering in the middle of a request, or could not
    generate (its model failed to load, or a wrong key)."""


class CaptureError(ExplorerError, RuntimeError):
    """A model runs, but its attention cannot be recorded exactly: the sentence says what it does that we cannot
    replay, and what to try instead."""


class SelectionError(ExplorerError, IndexError):
    """A layer, head or position that the trace does not have: the sentence names the ones it has."""


class MissingDataError(ExplorerError, ValueError):
    """A trace lacks what was asked of it (no logit lens; attention kept as weights, without queries and keys):
    the sentence says what to capture instead."""
