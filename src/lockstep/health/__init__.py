"""Health checks (HTTP, TCP, command) and the gate that waits for a release to pass them."""
