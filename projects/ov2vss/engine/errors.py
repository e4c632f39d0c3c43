"""Re-export of :class:`ov2vss.errors.SetupError` for the engine modules."""

from ..errors import SetupError

__all__ = ["SetupError"]
