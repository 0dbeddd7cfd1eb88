"""The command line: parses arguments, calls actions, renders their results. Nothing else."""

from lockstep.cli.standard_streams import reopen_closed_standard_streams

reopen_closed_standard_streams()  # before cli.output builds its consoles on sys.stdout / sys.stderr
