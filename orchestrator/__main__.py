"""`python -m orchestrator ARGS` = `mimray ARGS`, for machines without the console script (Ray
jobs). It imports the CLI as a module: `python -m orchestrator.cli.main` would run main.py as
`__main__` and import it a second time when a command module imports it back."""

from orchestrator.cli.main import main

main()
