"""The CLI answers at once where it has nothing heavy to do (issue 16).

`mimray --help`, `methods`, `presets` and every refusal of a bad config must not import torch,
Ray or MLflow (seconds of imports before a line was printed): each command runs in a fresh
interpreter, and what it imported is read from `sys.modules` when it exits.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "mlflow", "timm", "matplotlib")

# Runs `mimray ARGS` in this interpreter, then reports the exit code and the heavy modules.
PROBE = """
import json, sys
from orchestrator.cli.main import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as done:
    code = done.code or 0
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("PROBE " + json.dumps({{"code": code, "heavy": heavy}}))
"""

BAD_CONFIGS = {
    "unknown-method.yaml": "method: {name: nosuch}\n",
    "bad-knob.yaml": "method: {name: emae, k: 3}\n",  # 3 does not divide 64 patches
    "knob-out-of-range.yaml": "method: {name: sbam, gamma: 1.5}\n",
    "unknown-knob.yaml": "method: {name: pcae, nosuch: 1}\n",
    "bad-grid.yaml": "name: g\nbase: {method: {name: emae}}\nsweep: {grid: {method.k: [3, 4]}}\n",
    "grid-unknown-key.yaml": "name: g\nbase: {}\nsweep: {grid: {method.nosuch: [1, 2]}}\n",
}

CASES = [
    (["--help"], 0, "Commands"),
    (["methods"], 0, "consistency_weight"),
    (["presets"], 0, "emae-k"),
    (["pretrain", "unknown-method.yaml"], 2, "unknown method 'nosuch'"),
    (["pretrain", "bad-knob.yaml"], 2, "method.k: K=3 does not divide"),
    (["pretrain", "knob-out-of-range.yaml"], 2, "method.gamma"),
    (["pretrain", "unknown-knob.yaml"], 2, "method.nosuch"),
    (["pretrain", "demo", "--set", "method.mask_ratio=2"], 2, "method.mask_ratio"),
    (["sweep", "bad-grid.yaml"], 2, "method.k: K=3 does not divide"),
    (["sweep", "grid-unknown-key.yaml"], 2, "method.nosuch"),
    (["sweep", "bad-knob.yaml", "--dry-run"], 2, "no `sweep:` section"),
]


@pytest.mark.parametrize(("args", "code", "says"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_command_answers_without_heavy_imports(tmp_path, args, code, says):
    for name, text in BAD_CONFIGS.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(tmp_path)},
        timeout=120,
    )
    probe = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert probe, done.stdout[-1000:] + done.stderr[-2000:]
    result = json.loads(probe[-1].removeprefix("PROBE "))
    assert result == {"code": code, "heavy": []}, done.stderr[-2000:]
    assert says in done.stdout + done.stderr
    if code == 2:  # a refusal is one line, no traceback
        assert done.stderr.count("mimray: error:") == 1 and "Traceback" not in done.stderr


def test_models_are_still_built_from_the_registry():
    """The cards do not replace the methods: every card's method builds its model class."""
    from workloads.methods import get_method, method_card, method_names

    for name in method_names():
        method = get_method(name)
        assert method.card is method_card(name) and method.name == name
        assert method.knobs is method_card(name).knobs
        assert method.model.__module__ == method_card(name).module
