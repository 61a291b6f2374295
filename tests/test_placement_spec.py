"""Placing runs on node types: `scaling.worker_resources` and `sweep.driver_resources`."""

from __future__ import annotations

import pytest
from cli_checks import assert_refused
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.config import ConfigError, load_spec, load_sweep


def test_worker_resources_default_empty_and_keep_old_fingerprints():
    spec = load_spec("demo")
    assert spec.scaling.worker_resources == {}
    assert "scaling.worker_resources" not in spec.flat_params()
    pinned = load_spec("demo", ["scaling.worker_resources={gpu_8x: 1}"])
    assert pinned.scaling.worker_resources == {"gpu_8x": 1.0}
    assert pinned.scaling.cpus_per_worker == spec.scaling.cpus_per_worker
    assert pinned.fingerprint() != spec.fingerprint()
    assert pinned.flat_params()["scaling.worker_resources.gpu_8x"] == 1.0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("scaling.worker_resources={CPU: 1}", "scaling.worker_resources.CPU: is not a custom"),
        ("scaling.worker_resources={GPU: 1}", "scaling.worker_resources.GPU: is not a custom"),
        ("scaling.worker_resources={gpu_8x: 0}", "scaling.worker_resources.gpu_8x: must be"),
        ("scaling.worker_resources={gpu_8x: lots}", "scaling.worker_resources.gpu_8x: Input"),
        ("scaling.worker_resources=1", "scaling.worker_resources: Input should be a valid dict"),
    ],
)
def test_bad_worker_resources_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_spec("demo", [override])
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)


def test_driver_resources_are_a_sweep_setting():
    sweep, _ = load_sweep("emae-k")
    assert sweep.sweep.driver_resources == {}
    sweep, _ = load_sweep("emae-k", ["sweep.driver_resources={on_demand: 0.01}"])
    assert sweep.sweep.driver_resources == {"on_demand": 0.01}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("sweep.driver_resources={CPU: 1}", "sweep.driver_resources.CPU: is not a custom"),
        ("sweep.driver_resources={on_demand: -1}", "sweep.driver_resources.on_demand: must be"),
    ],
)
def test_bad_driver_resources_exit_2_naming_the_key(override, expected, workdir):
    result = CliRunner().invoke(main, ["sweep", "emae-k", "--set", override, "--dry-run"])
    assert_refused(result, expected, at_start=True)


def test_dry_run_shows_the_custom_resources_per_worker(workdir):
    result = CliRunner().invoke(
        main, ["sweep", "emae-k", "--set", "scaling.worker_resources={gpu_8x: 1}", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "2 x (0.5 CPU + 1 gpu_8x)" in result.output


def test_trial_drivers_reserve_on_demand_where_the_cluster_marks_it():
    from orchestrator.sweep.placement import driver_resources_on, trial_resources

    marked = {"CPU": 40.0, "GPU": 8.0, "on_demand": 200.0, "gpu_1x": 8.0}
    assert driver_resources_on(marked, {}) == {"on_demand": 0.01}
    assert driver_resources_on(marked, {"cpu_pool": 1.0}) == {"cpu_pool": 1.0, "on_demand": 0.01}
    # The user's own amount wins; a machine or cluster without the mark changes nothing.
    assert driver_resources_on(marked, {"on_demand": 1.0}) == {"on_demand": 1.0}
    assert driver_resources_on({"CPU": 2.0, "memory": 1e9}, {}) == {}

    # A worker group's driver takes it; a one-worker CPU trial is itself the worker.
    group = load_spec("demo")
    assert trial_resources(group, {}, {"on_demand": 0.01}) == {"CPU": 0.01, "on_demand": 0.01}
    single = load_spec("demo", ["scaling.num_workers=1", "scaling.worker_resources={x: 1}"])
    assert trial_resources(single, {}, {"on_demand": 0.01}) == {"x": 1.0, "CPU": 0.5}
