"""One sweep trial as Tune runs it: its run spec and its MLflow run come from Tune's config.

Tune's config of a trial holds the trial's knobs by dotted name (`method.k`, `train.seed`,
...) and its index in the sweep (`trial`). The trial builds its run spec from the sweep's base
and those knobs, validated by `orchestrator.config`, so what Tune records as the trial's config
is what it trained. It opens its MLflow run when it starts, as Ray's own MLflow integration
does: a child of the sweep's parent run, created, or found again by its key (the trial's
deterministic name) when Tune retries or restores the trial, and it declares its training data
then. Trials that Optuna suggests are known only as they start; they are run the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.config import RunSpec, SweepSpec, validate_spec
from orchestrator.config.sweep import trial_spec
from orchestrator.pretrain.prepare import PreparedRun, TrainableData, check_trainable, prepare_run
from orchestrator.sweep.space import TRIAL_KEY
from orchestrator.tracking import KIND_TAG, SWEEP_TAG, TRIAL_INDEX_TAG, Tracker
from workloads.data import DatasetInfo

# The Ray node the trial's own process ran on (its last start): where its driver was placed.
TRIAL_NODE_TAG = "mimray.trial_node"


@dataclass(frozen=True)
class SweepContext:
    """What every trial of one sweep shares; each trial gets it with `tune.with_parameters`."""

    sweep: SweepSpec
    name: str
    parent_run_id: str
    # Resolved by the driver: a trial's process runs in Tune's trial folder, so a default
    # under the working folder would resolve elsewhere there.
    tracking_uri: str
    experiment: str
    storage_path: str
    # Training data sets the driver described before Tune started
    # (`pretrain.prepare.described_data`): a trial whose data is among them does not list its source
    # again.
    described: Mapping[str, DatasetInfo]

    def spec_of(self, config: Mapping[str, Any]) -> RunSpec:
        """The trial's run spec: the sweep's base with the knobs of its Tune config."""
        return trial_spec(self.sweep, knob_values(config), validate_spec)

    def checked(self, spec: RunSpec) -> TrainableData:
        return check_trainable(spec, self.described)


def knob_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of a trial's Tune config (dotted key -> value), without its index."""
    return {key: value for key, value in config.items() if key != TRIAL_KEY}


def trial_tags(sweep_name: str, index: int) -> dict[str, str]:
    return {SWEEP_TAG: sweep_name, TRIAL_INDEX_TAG: str(index), KIND_TAG: "trial"}


def open_trial_run(
    tracker: Tracker,
    spec: RunSpec,
    name: str,
    index: int,
    sweep_name: str,
    parent_run_id: str,
    checked: TrainableData,
    storage_path: str,
    extra_tags: Mapping[str, str] | None = None,
    input_at_start: bool = False,
) -> PreparedRun:
    """The trial's MLflow run, a child of the sweep's parent run: created, or found by its key
    (`name`). `input_at_start`: leave its training input for the caller to declare."""
    return prepare_run(
        spec,
        name,
        tracker,
        checked,
        {**trial_tags(sweep_name, index), **(extra_tags or {})},
        parent_run_id,
        input_at_start=input_at_start,
        storage_path=storage_path,
    )


def start_trial(context: SweepContext, config: Mapping[str, Any], name: str) -> PreparedRun:
    """What a trial does as it starts: its spec from `config`, and its MLflow run opened."""
    import ray

    spec = context.spec_of(config)
    tracker = Tracker(context.tracking_uri, context.experiment)
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return open_trial_run(
        tracker,
        spec,
        name,
        int(config[TRIAL_KEY]),
        context.name,
        context.parent_run_id,
        context.checked(spec),
        context.storage_path,
        extra_tags={TRIAL_NODE_TAG: node} if node else None,
    )


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """The Tune trainable: start the trial, fit it reporting epochs to Tune as they come, then
    run its chained evaluations."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # Imported here, in the trial's process: fitting pulls in the models (torch, timm), which the
    # sweep's driver, importing this module for the trainable, never needs.
    from orchestrator.pretrain.launch import evaluate_after, execute_run

    run = start_trial(context, config, tune.get_context().get_trial_name())
    result = execute_run(run, callbacks=[TuneReportCallback()])
    if not result.trained:
        # Finished before, and MLflow holds its last checkpoint, but Tune had not recorded its
        # end (a driver killed in between, Tune's state lost): nothing was reported in this
        # process, and a searcher (Optuna) rejects a trial that ends without its metric.
        final = {
            "epoch": result.epochs_done,
            "loss": result.final_loss,
            "images_per_s": result.images_per_s,
        }
        tune.report({key: value for key, value in final.items() if value is not None})
    evaluate_after(run, result.epochs_done)
