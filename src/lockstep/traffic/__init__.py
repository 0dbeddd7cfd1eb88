"""Traffic switches: what sends users' requests to the active slot (built-in proxy, nginx, HAProxy)."""
