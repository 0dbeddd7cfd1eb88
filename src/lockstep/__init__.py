"""lockstep: deploys that are safe to undo."""

__version__ = "0.1.0"
