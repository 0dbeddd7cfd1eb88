"""`lockstep agent`: keeps the app's processes running and owns the traffic switch for one environment."""
