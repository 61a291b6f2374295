"""The `mimray` command line: `main.py` holds the group and the light commands; each heavy
command group lives in its own module here and is imported only when it runs."""
