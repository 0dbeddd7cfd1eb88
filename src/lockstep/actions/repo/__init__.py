"""Actions behind `lockstep repo …`."""
