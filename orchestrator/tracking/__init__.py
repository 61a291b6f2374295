"""Everything a run records in MLflow, and the reads back from it: the only package that
imports MLflow.

- `lookup.py`: the reads that span runs, sweeps and checkpoints (report, lineage, eval).
- `provenance.py`: which code produced a run (version, commit, config fingerprint).
- `names.py`: the tags by which runs, sweeps, evaluations and checkpoints are found.
- `store.py`: where the store is (`./mimray-runs/` or MLFLOW_TRACKING_URI) and how SQLite commits.
- `tracker.py`: the driver's writes, all through `MlflowClient`; each run found or created by a
  deterministic key.
- `reporter.py`: what rank 0 writes while a run trains (`MlflowReporter`).
- `reader.py`: the one interface every read goes through (`RunReader`) and its reference
  implementation on `MlflowClient`; `records.py`: the records it returns.
- `sql_reads.py`, `rest_reads.py`: the same reads by plain SELECTs on an SQLite store whose tables
  are the expected ones, and over a tracking server's REST API.
- `checkpoints.py`: runs' checkpoints (LoggedModels), found in one search per 100 runs.
- `artifacts.py`: small files attached to runs (a sweep's report).

Nothing here imports MLflow at import time: the CLI names a store before it pays for MLflow.
"""

from orchestrator.tracking.names import (
    CHECKPOINT_EPOCH_TAG,
    CHECKPOINT_URI_TAG,
    EVAL_PROTOCOL_TAG,
    EXPERIMENT_KIND_TAG,
    FINGERPRINT_TAG,
    KIND_TAG,
    MODEL_ID_TAG,
    MODEL_TYPE,
    PRETRAIN_RUN_TAG,
    RUN_KEY_TAG,
    SWEEP_TAG,
    TRIAL_INDEX_TAG,
)
from orchestrator.tracking.reporter import MlflowReporter
from orchestrator.tracking.store import (
    default_root,
    measured_epoch_seconds,
    resolve_tracking_uri,
    use_wal,
)
from orchestrator.tracking.tracker import RunHandle, Tracker

__all__ = [
    "CHECKPOINT_EPOCH_TAG",
    "CHECKPOINT_URI_TAG",
    "EVAL_PROTOCOL_TAG",
    "EXPERIMENT_KIND_TAG",
    "FINGERPRINT_TAG",
    "KIND_TAG",
    "MODEL_ID_TAG",
    "MODEL_TYPE",
    "PRETRAIN_RUN_TAG",
    "RUN_KEY_TAG",
    "SWEEP_TAG",
    "TRIAL_INDEX_TAG",
    "MlflowReporter",
    "RunHandle",
    "Tracker",
    "default_root",
    "measured_epoch_seconds",
    "resolve_tracking_uri",
    "use_wal",
]
