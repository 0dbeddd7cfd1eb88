"""Tests of lockstep.toml: the model, loading and the generated sample and docs."""
