"""The tags and names by which mimray finds its runs and checkpoints in MLflow (no MLflow
import: the CLI's readers name them before they open a store)."""

RUN_KEY_TAG = "mimray.run_key"
FINGERPRINT_TAG = "mimray.config_fingerprint"
CHECKPOINT_URI_TAG = "mimray.checkpoint_uri"
# How sweeps and evaluations are linked (reports and eval chaining query these tags):
KIND_TAG = "mimray.kind"  # sweep | trial | eval
SWEEP_TAG = "mimray.sweep"  # on the sweep's parent, its trials and their eval runs
TRIAL_INDEX_TAG = "mimray.trial_index"
EVAL_PROTOCOL_TAG = "mimray.eval.protocol"  # knn | linear | finetune
PRETRAIN_RUN_TAG = "mimray.pretrain_run_id"  # the trial/pretrain run an eval run evaluated
MODEL_ID_TAG = "mimray.model_id"  # the LoggedModel (checkpoint) an eval run evaluated
CHECKPOINT_EPOCH_TAG = "mimray.checkpoint_epoch"
# MLflow 3's kind of experiment (model training), for what reads it; MLflow 3.17's UI chooses
# its layout by the link that opens it instead (`ui_links.py`), whatever this tag says.
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
MODEL_TYPE = "mimray-pretrain-checkpoint"
