"""Worker side: what rank 0 writes to MLflow while a run trains.

`MlflowReporter` is the `workloads.run_reporter.Reporter` that rank 0 uses to write metrics,
system metrics and one LoggedModel per checkpoint. The LoggedModel points at the checkpoint's
URI in Ray storage; the weights are not copied into MLflow.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.tracking.names import CHECKPOINT_URI_TAG, MODEL_TYPE, SWEEP_TAG
from orchestrator.tracking.store import commit_without_fsync

# MLflow's tags for where something came from, copied from the run onto its checkpoints (its UI
# shows them as a model's "Logged from"); the source name first.
SOURCE_TAGS = (
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.source.git.commit",
    "mlflow.source.git.branch",
    "mlflow.source.git.repoURL",
)


@dataclass
class MlflowReporter:
    """Rank 0's reporter: buffered per-step metrics, system metrics, a LoggedModel per checkpoint.

    It travels to the worker pickled in the train-loop config, so it holds only plain fields
    until `start()` opens the client in the worker process.

    With `commit_on_checkpoint` (training runs), a worker-group restart never records a step,
    an epoch or a checkpoint twice. MLflow's history is append-only, and a restart redoes
    everything after the last checkpoint Ray registered. So metrics wait until the next
    checkpoint is logged, and a failed attempt's are dropped in `close()`; and because a
    checkpoint the worker saved may still be lost (Ray Train registers it a poll later, seen
    here: a worker killed in that window restarted the run from epoch 1), each attempt also
    skips the steps and checkpoints the run already holds. The live view while an epoch runs
    is Prometheus' (`workloads.live_metrics`).
    """

    tracking_uri: str
    run_id: str
    experiment_id: str
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    flush_every_s: float = 5.0
    commit_on_checkpoint: bool = False
    _buffer: list = field(default_factory=list, repr=False)
    _uncommitted: list = field(default_factory=list, repr=False)
    _recorded_up_to: dict = field(default_factory=dict, repr=False)  # key -> last step in run
    _recorded_checkpoints: dict | None = field(default=None, repr=False)  # epoch -> model id
    _checkpoint_origin: tuple | None = field(default=None, repr=False)  # (source tags, dataset)
    _last_flush: float = field(default=0.0, repr=False)
    _client: Any = field(default=None, repr=False)
    _monitor: Any = field(default=None, repr=False)

    def start(self) -> None:
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(self.tracking_uri)
        if self.tracking_uri.startswith("sqlite:///"):
            commit_without_fsync()  # the driver put the store in WAL mode
        self._client = MlflowClient(self.tracking_uri)
        self._last_flush = time.monotonic()
        if self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=self.system_metrics_interval_s, resume_logging=True
            )
            self._monitor.start()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if self.commit_on_checkpoint:
            self._uncommitted.extend(points)
            return
        self._buffer.extend(points)
        # Per-step metrics are cheap to buffer; a write per step would slow the loop.
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def log_event(self, metrics: Mapping[str, float], step: int) -> None:
        """Written now, past the buffers and the skip of steps the run holds: a resume happens
        once per attempt, and each one must add its point even at an already recorded step."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=points)

    def flush(self) -> None:
        if self.commit_on_checkpoint:
            self._buffer = [m for m in self._buffer if m.step > self._recorded_step(m.key)]
        while self._buffer:
            batch, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def _recorded_step(self, key: str) -> int:
        """The last step of `key` the run held when this attempt first wrote it (-1: none).

        Read once per key and attempt, before this attempt writes it: its own later steps
        are larger. A resumed run reads its whole history of each key once, on restart.
        """
        if key not in self._recorded_up_to:
            history = self._client.get_metric_history(self.run_id, key)
            self._recorded_up_to[key] = max((m.step for m in history), default=-1)
        return self._recorded_up_to[key]

    def log_checkpoint(
        self, uri: str, epoch: int, step: int, metrics: Mapping[str, float]
    ) -> str | None:
        # The checkpoint is saved (the loop logs it after `ray.train.report` returned): what
        # led to it can no longer be redone by a restart.
        self._buffer.extend(self._uncommitted)
        self._uncommitted = []
        self.flush()
        if self.commit_on_checkpoint:
            if self._recorded_checkpoints is None:
                self._recorded_checkpoints = self.whole_records()
            if epoch in self._recorded_checkpoints:
                # Redone after a lost registration: same directory (deterministic name),
                # rewritten in place, so the recorded model already points at it.
                return self._recorded_checkpoints[epoch]
        source, _ = self._origin()
        return self._record(
            f"checkpoint-epoch-{epoch:04d}",
            {**source, CHECKPOINT_URI_TAG: uri},
            {"epoch": str(epoch), "step": str(step), "checkpoint_uri": uri},
            metrics.get("loss"),
        )

    def _record(
        self, name: str, tags: Mapping[str, str], params: Mapping[str, str], loss: float | None
    ) -> str:
        """A checkpoint's LoggedModel, output of the run at its step, with its loss."""
        import mlflow
        from mlflow.entities import LoggedModelOutput

        _, dataset = self._origin()
        model = mlflow.create_external_model(
            name=name,
            source_run_id=self.run_id,
            experiment_id=self.experiment_id,
            model_type=MODEL_TYPE,
            tags=dict(tags),
            params=dict(params),
        )
        step = int(params["step"])
        self._client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)])
        if loss is not None:
            # With the training data set named: MLflow lists a model's data sets from its metrics.
            self._client.log_metric(
                self.run_id,
                "checkpoint/loss",
                float(loss),
                step=int(params["epoch"]),
                model_id=model.model_id,
                dataset_name=dataset[0] if dataset else None,
                dataset_digest=dataset[1] if dataset else None,
            )
        return model.model_id

    def whole_records(self) -> dict[int, str]:
        """Epoch -> model id of the checkpoints this run recorded, each whole.

        A record that a kill cut short (MLflow creates a LoggedModel PENDING and makes it READY
        once its MLmodel file is stored) is made again from its own name, tags and params, and
        the half one deleted: its checkpoint may be the very one this attempt resumed from,
        which is never redone, so waiting for a redo would lose it. Called by a resumed run
        before it reads its records, and by an attempt's first checkpoint."""
        from mlflow.entities import LoggedModelStatus

        records: dict[int, str] = {}
        losses: dict[int, float] | None = None  # epoch -> epoch/loss, read once if needed
        for model in self._client.search_logged_models(
            experiment_ids=[self.experiment_id],
            filter_string=f"source_run_id = '{self.run_id}'",
        ):
            if "epoch" not in model.params:
                continue
            epoch = int(model.params["epoch"])
            if model.status == LoggedModelStatus.READY:
                records[epoch] = model.model_id
                continue
            self._client.delete_logged_model(model.model_id)
            kept = (*SOURCE_TAGS, CHECKPOINT_URI_TAG)
            tags = {key: value for key, value in model.tags.items() if key in kept}
            if losses is None:
                history = self._client.get_metric_history(self.run_id, "epoch/loss")
                losses = {m.step: m.value for m in history}
            records[epoch] = self._record(model.name, tags, model.params, losses.get(epoch))
        return records

    def _origin(self) -> tuple[dict[str, str], tuple[str, str] | None]:
        """Where this run's checkpoints come from: the run's source tags (the mimray command and
        commit, set by the driver) and its training data set (name, digest); read once.

        MLflow fills a new model's source from the process that creates it, and rank 0 is a Ray
        worker: without these every checkpoint said "Logged from default_worker.py"."""
        if self._checkpoint_origin is None:
            run = self._client.get_run(self.run_id)
            tags = run.data.tags
            source = {key: tags[key] for key in SOURCE_TAGS if key in tags}
            # A run opened where the command is not known (a Ray worker) or recorded before
            # runs had these tags: name what mimray can tell.
            sweep = tags.get(SWEEP_TAG)
            source.setdefault(SOURCE_TAGS[0], f"mimray sweep {sweep}" if sweep else "mimray")
            inputs = run.inputs.dataset_inputs if run.inputs is not None else []
            training = [
                (d.dataset.name, d.dataset.digest)
                for d in inputs
                if any(t.key == "mlflow.data.context" and t.value == "training" for t in d.tags)
            ]
            self._checkpoint_origin = (source, training[0] if training else None)
        return self._checkpoint_origin

    def close(self) -> None:
        self._uncommitted = []  # no checkpoint holds them: a restarted attempt redoes them
        if self._client is not None:
            self.flush()
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
