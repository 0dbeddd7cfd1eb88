"""One module per verb. Actions do the work and return data; they never print."""
