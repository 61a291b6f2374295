"""Data plane: the plain-torch code that runs inside workers; never imports orchestrator."""
