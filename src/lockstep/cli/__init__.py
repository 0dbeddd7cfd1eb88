"""The command line: parses arguments, calls actions, renders their results. Nothing else."""
