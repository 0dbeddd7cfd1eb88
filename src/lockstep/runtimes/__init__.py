"""Runtimes: what starts, supervises and stops the application's processes (today: local processes)."""
