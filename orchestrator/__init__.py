"""mimray control plane: specs, launch, tracking and the CLI. Decides what runs and records it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mimray")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
