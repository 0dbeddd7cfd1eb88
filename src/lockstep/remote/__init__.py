"""Reaching other machines: SSH to the hosts of a multi-host environment."""
