"""Pipelines: multi-step work built from adapters and the repository engine (a coordinated snapshot)."""
