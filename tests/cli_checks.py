"""The check every refusal test makes: exit status 2 and one line that names the problem."""

from __future__ import annotations

import subprocess
from typing import Any

PREFIX = "mimray: error: "


def assert_refused(outcome: Any, expected: str, *, at_start: bool = False) -> str:
    """`outcome` (a click `Result` or a `CompletedProcess`) exited 2 and printed exactly one
    line, starting `mimray: error: `, that contains `expected` (or, with `at_start`, goes on
    with it). Returns that line."""
    if isinstance(outcome, subprocess.CompletedProcess):
        code, output = outcome.returncode, (outcome.stdout or "") + (outcome.stderr or "")
    else:
        code, output = outcome.exit_code, outcome.output
    assert code == 2, f"exit status {code}, not 2:\n{output[-3000:]}"
    lines = output.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines, not one:\n{output[-3000:]}"
    line = lines[0]
    assert line.startswith(PREFIX), line
    if at_start:
        assert line.startswith(PREFIX + expected), line
    else:
        assert expected in line, line
    return line
