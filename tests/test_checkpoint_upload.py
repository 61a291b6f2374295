"""Where checkpoints go decides how they are written: a worker group uploads to an object
store in the background (Ray Train's asynchronous upload), and writes a local folder in step.
The end-to-end proof that a run uploading in the background resumes from its last checkpoint
in S3 is `test_s3_checkpoints_e2e.py` (two workers, `storage.path: s3://`)."""

from __future__ import annotations

import pytest

from orchestrator.pretrain.trainer import is_remote


@pytest.mark.parametrize(
    ("storage", "remote"),
    [
        ("s3://bucket/runs", True),
        ("gs://bucket/runs", True),
        ("/home/me/mimray-runs/ray", False),
        ("file:///home/me/mimray-runs/ray", False),
        ("mimray-runs/ray", False),
    ],
)
def test_object_storage_is_remote_and_a_folder_is_not(storage, remote):
    assert is_remote(storage) is remote


@pytest.mark.slow
def test_background_upload_to_s3_records_committed_checkpoints_and_resumes(
    ray_session, s3_env, bucket
):
    import pyarrow.fs
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # The workers of the shared local Ray do not see this test's S3 environment: the
    # filesystem (endpoint and keys) travels with the run config.
    filesystem = pyarrow.fs.S3FileSystem(
        endpoint_override=s3_env,
        scheme="http",
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
    )

    # Defined here so that Ray pickles it by value: the workers cannot import tests.
    def upload_loop(config: dict) -> None:
        """Epochs through the worker session with background upload: each checkpoint holds
        its epoch; each record notes whether storage held the checkpoint when it was made."""
        import os
        import tempfile

        import pyarrow.fs

        from workloads.session import RayTrainSession

        session = RayTrainSession(async_upload=True)
        fs, run = config["filesystem"], config["run"]
        start = 0
        checkpoint = session.latest_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                start = int(open(os.path.join(folder, "epoch.txt")).read())
        records = [f"start {start}"]
        for epoch in range(start + 1, config["epochs"] + 1):
            folder = tempfile.mkdtemp()
            with open(os.path.join(folder, "epoch.txt"), "w") as f:
                f.write(str(epoch))
            name = f"checkpoint_epoch_{epoch:04d}"

            def record(name: str = name) -> None:
                stored = fs.get_file_info(f"{run}/{name}/epoch.txt").type
                records.append(f"{name} {stored == pyarrow.fs.FileType.File}")

            session.report(
                {"epoch": epoch}, checkpoint_folder=folder, dir_name=name, on_checkpoint=record
            )
        session.finish()
        with fs.open_output_stream(f"{run}-records-{config['epochs']}.txt") as out:
            out.write("\n".join(records).encode())

    def fit(epochs: int):
        return TorchTrainer(
            upload_loop,
            train_loop_config={
                "epochs": epochs,
                "filesystem": filesystem,
                "run": f"{bucket}/ray/async",
            },
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(
                name="async",
                storage_path=f"{bucket}/ray",
                storage_filesystem=filesystem,
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        ).fit()

    def records(epochs: int) -> list[str]:
        with filesystem.open_input_stream(f"{bucket}/ray/async-records-{epochs}.txt") as f:
            return f.read().decode().splitlines()

    fit(3)
    # Every checkpoint was recorded, each once it was in the bucket, not before.
    assert records(3) == ["start 0"] + [f"checkpoint_epoch_000{e} True" for e in (1, 2, 3)]
    listed = filesystem.get_file_info(pyarrow.fs.FileSelector(f"{bucket}/ray/async"))
    kept = sorted(i.base_name for i in listed if i.base_name.startswith("checkpoint_epoch"))
    assert kept == ["checkpoint_epoch_0002", "checkpoint_epoch_0003"]  # keep 2
    # Run again by name with more epochs: it resumes from the last uploaded checkpoint.
    fit(5)
    assert records(5) == ["start 3"] + [f"checkpoint_epoch_000{e} True" for e in (4, 5)]
