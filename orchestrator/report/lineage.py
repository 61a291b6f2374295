"""The lineage tree of a run or checkpoint: sweep -> trial runs -> checkpoints -> evaluations.

Built from MLflow alone (tags, LoggedModels and dataset inputs), as plain data for `--json`
and as a rich Tree for the terminal. A sweep's tree is read in a bounded number of queries
(`lookup`): its trials, their eval runs and their checkpoints in bulk, not per trial.
"""

from __future__ import annotations

from typing import Any

from rich.tree import Tree

from orchestrator.errors import ConfigError
from orchestrator.tracking import (
    EVAL_PROTOCOL_TAG,
    KIND_TAG,
    MODEL_ID_TAG,
    PRETRAIN_RUN_TAG,
)
from orchestrator.tracking.lookup import (
    checkpoint_models,
    checkpoint_models_of,
    eval_runs_of,
    find_named_run,
    find_sweep,
    get_checkpoint_model,
    is_result_metric,
    open_reader,
    prefetch_sweep,
    sweep_eval_runs,
    sweep_trials,
)
from orchestrator.tracking.records import TrackedModel, TrackedRun


def lineage(tracking_uri: str, target: str) -> dict[str, Any]:
    """The tree around TARGET: a run id (sweep, trial, pretrain or eval), a checkpoint model
    id, or a sweep name. A checkpoint or eval narrows the tree to that checkpoint."""
    reader = open_reader(tracking_uri)
    only_model: str | None = None
    model = get_checkpoint_model(reader, target)
    run = reader.run(target)
    if model is not None:
        only_model, run = model.model_id, reader.run(model.source_run_id or "")
        if run is None:
            raise ConfigError(f"target {target}: the run that logged it no longer exists")
    elif run is not None and run.tags.get(KIND_TAG) == "eval":
        only_model = run.tags.get(MODEL_ID_TAG)
        run = reader.run(run.tags.get(PRETRAIN_RUN_TAG, ""))
        if run is None:
            raise ConfigError(f"target {target}: the run it evaluated no longer exists")
    elif run is None:
        run = find_sweep(reader, target) or find_named_run(reader, target)
        if run is None:
            raise ConfigError(
                f"target {target!r}: not a run id, a checkpoint model id (m-...), a run name "
                f"or a sweep name in {tracking_uri}"
            )

    if run.tags.get(KIND_TAG) == "sweep":
        prefetch_sweep(reader, run, "trial", "eval")  # from a server: both under way at once
        sweep, pretrain_runs = run, sweep_trials(reader, run)
        evals = sweep_eval_runs(reader, run)
        models = checkpoint_models_of(reader, run.experiment_id, [r.run_id for r in pretrain_runs])
    else:
        parent_id = run.tags.get("mlflow.parentRunId")
        parent = reader.run(parent_id) if parent_id else None
        is_sweep = parent is not None and parent.tags.get(KIND_TAG) == "sweep"
        sweep, pretrain_runs = (parent if is_sweep else None), [run]
        evals = {run.run_id: eval_runs_of(reader, run)}
        models = {run.run_id: checkpoint_models(reader, run)}
    return {
        "tracking_uri": tracking_uri,
        "sweep": _run_summary(sweep) if sweep is not None else None,
        "runs": [
            _pretrain_node(r, evals.get(r.run_id, []), models[r.run_id], only_model)
            for r in pretrain_runs
        ],
    }


def _run_summary(run: TrackedRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "name": run.name,
        "status": run.status,
        "datasets": [
            {"name": d.name, "digest": d.digest, "context": d.context} for d in run.datasets
        ],
    }


def _pretrain_node(
    run: TrackedRun, evals: list[TrackedRun], models: list[TrackedModel], only_model: str | None
) -> dict[str, Any]:
    """The run with its checkpoints (`models`, oldest first), each with its `evals`."""
    evals_by_model: dict[str, list[dict[str, Any]]] = {}
    for evaluation in evals:
        evals_by_model.setdefault(evaluation.tags.get(MODEL_ID_TAG, ""), []).append(
            {
                **_run_summary(evaluation),
                "protocol": evaluation.tags.get(EVAL_PROTOCOL_TAG),
                "metrics": {
                    k: v for k, v in sorted(evaluation.metrics.items()) if is_result_metric(k)
                },
            }
        )
    checkpoints = [
        {
            "epoch": int(model.params.get("epoch", 0)),
            "model_id": model.model_id,
            "uri": model.params.get("checkpoint_uri"),
            "evals": sorted(evals_by_model.get(model.model_id, []), key=lambda e: e["protocol"]),
        }
        for model in models
        if only_model is None or model.model_id == only_model
    ]
    return {
        **_run_summary(run),
        "method": run.tags.get("mimray.method"),
        "kind": run.tags.get(KIND_TAG, "run"),
        "checkpoints": checkpoints,
    }


def lineage_tree(tree: dict[str, Any]) -> Tree:
    """The lineage as a rich Tree: one line per run, checkpoint and evaluation."""
    sweep = tree["sweep"]
    root = Tree(
        f"[bold]sweep {sweep['name']}[/]  run {sweep['run_id']}"
        if sweep
        else f"[bold]MLflow {tree['tracking_uri']}[/]"
    )
    for run in tree["runs"]:
        branch = root.add(
            f"[bold]{run['kind']} {run['name']}[/]  run {run['run_id']}  {run['method']}  "
            f"{run['status']}{_data_note(run['datasets'])}"
        )
        if not run["checkpoints"]:
            branch.add("[dim]no checkpoints[/]")
        for checkpoint in run["checkpoints"]:
            node = branch.add(
                f"checkpoint epoch {checkpoint['epoch']}  {checkpoint['model_id']}  "
                f"{checkpoint['uri']}"
            )
            for evaluation in checkpoint["evals"]:
                scores = "  ".join(f"{k} {v:.4f}" for k, v in evaluation["metrics"].items())
                node.add(
                    f"[green]{evaluation['protocol']}[/]  {scores or evaluation['status']}  "
                    f"run {evaluation['run_id']}{_data_note(evaluation['datasets'])}"
                )
    return root


def _data_note(datasets: list[dict[str, str]]) -> str:
    if not datasets:
        return ""
    shown = ", ".join(f"{d['name']}@{d['digest'][:12]}" for d in datasets)
    return f"  [dim]data {shown}[/]"
