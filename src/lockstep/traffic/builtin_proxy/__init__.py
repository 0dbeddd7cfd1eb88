"""lockstep's built-in traffic switch: a small HTTP/1.1 reverse proxy run as its own process.

It outlives the `lockstep` command that started it, forwards every request to one upstream port
(the active slot) and takes orders (state, switch, stop) only over a unix socket in its state
directory. `lockstep.traffic.builtin` is the adapter that starts, adopts and drives it.
"""

from __future__ import annotations

STATE_FILE_NAME = "upstream.json"
HOLD_FILE_NAME = "hold.json"  # only while traffic is held
PID_FILE_NAME = "proxy.pid"
ADMIN_SOCKET_NAME = "admin.sock"
LOG_FILE_NAME = "proxy.log"
