"""The error every mimray command turns into one line and exit status 2.

Its own module, not the spec's: `mimray report` and `mimray lineage` raise and catch it too,
and importing the spec package imports the method registry, and with it torch (slow).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A spec the user must fix; the message is one line naming the key."""
