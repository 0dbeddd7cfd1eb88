"""Allow `python -m lockstep`."""

from lockstep.cli.main import main

main()
