"""Links that open mimray's experiments in the MLflow UI's model-training view.

MLflow 3.17 (and 3.18) choose between the UI's GenAI and model-training layouts from the
`workflowType` URL parameter, else from the browser's local storage, whose default is GenAI
(mlflow/mlflow#24498); an experiment's `mlflow.experimentKind` tag does not pick the layout.
A link that carries `workflowType=machine_learning` opens the training view in any browser,
a fresh one included; the experiment's tabs keep the parameter, and clicking "Model training"
once makes it that browser's default.
"""

from __future__ import annotations

from orchestrator.tracking.names import EXPERIMENT_KIND_TAG

TRAINING_VIEW_QUERY = "workflowType=machine_learning"


def experiment_link(base_url: str, experiment_id: str) -> str:
    """The experiment's runs in the model-training view (the UI routes after `#`)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW_QUERY}"


def model_link(base_url: str, experiment_id: str, model_id: str) -> str:
    """A checkpoint's LoggedModel page in the model-training view."""
    return (
        f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/models/{model_id}"
        f"?{TRAINING_VIEW_QUERY}"
    )


def training_experiments(tracking_uri: str) -> list[tuple[str, str]]:
    """(id, name) of the store's model-training experiments (mimray creates its own so), in
    id order."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    key, value = EXPERIMENT_KIND_TAG
    try:
        found = MlflowClient(tracking_uri).search_experiments(
            filter_string=f"tags.`{key}` = '{value}'", max_results=1000
        )
    except MlflowException:  # links are a convenience: the UI starts without them
        return []
    return sorted(((e.experiment_id, e.name) for e in found), key=lambda e: (len(e[0]), e[0]))
