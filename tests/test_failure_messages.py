"""A run that fails inside Ray ends with one line that says why, taken from the exception
objects Ray hands over (not scraped from their text)."""

from __future__ import annotations

import pytest

from orchestrator.cli.common import root_cause


def test_a_task_error_names_the_users_exception(ray_session):
    ray = ray_session

    def raise_in_task() -> None:  # nested: pickled by value, workers cannot import tests/
        raise ValueError("shard 3 has no images\nsecond line of detail")

    task = ray.remote(raise_in_task)
    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(task.remote())
    assert root_cause(caught.value) == "ValueError: shard 3 has no images"


@pytest.mark.slow
def test_a_worker_group_failure_names_the_rank_and_its_exception(ray_session, tmp_path):
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    def _train_fn(config: dict) -> None:
        import ray.train

        if ray.train.get_context().get_world_rank() == 1:
            raise KeyError("method.k")

    trainer = TorchTrainer(
        _train_fn,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(
            name="fails", storage_path=str(tmp_path), failure_config=FailureConfig(max_failures=0)
        ),
    )
    with pytest.raises(TrainingFailedError) as caught:
        trainer.fit()
    assert root_cause(caught.value) == "rank 1: KeyError: 'method.k'"
