"""A run's data is checked once: `check_trainable` lists the source (an S3 listing for stored
data), `prepare_run` records the run from that answer without listing again, and a sweep lists
each distinct data set once however many trials share it. No Ray; a real SQLite MLflow store.
"""

from __future__ import annotations

import pytest

import orchestrator.pretrain.prepare as run_prep
from orchestrator.config import load_spec
from orchestrator.pretrain.prepare import check_trainable, described_data, prepare_run
from orchestrator.tracking import Tracker, resolve_tracking_uri

TINY = ["data.source=shapes", "data.num_images=96", "train.batch_size=16", "train.epochs=1"]


@pytest.fixture
def listings(monkeypatch):
    """The sources `run_prep` describes, in order (the real `describe_source` answers)."""
    seen: list[tuple[str, int | None]] = []
    real = run_prep.describe_source

    def counting(source, **kwargs):
        seen.append((source, kwargs.get("num_images")))
        return real(source, **kwargs)

    monkeypatch.setattr(run_prep, "describe_source", counting)
    return seen


def test_prepare_run_records_the_checked_data_without_listing_it_again(workdir, listings):
    spec = load_spec("demo", TINY)
    checked = check_trainable(spec)
    assert listings == [("shapes", 96)]
    tracker = Tracker(resolve_tracking_uri(), "prep")
    run = prepare_run(spec, "once", tracker, checked)
    assert listings == [("shapes", 96)]  # no second listing
    assert (run.num_rows, run.schedule.steps_per_epoch) == (96, 6)
    recorded = tracker.client.get_run(run.run_id).inputs.dataset_inputs
    assert [d.dataset.name for d in recorded] == ["shapes-train"]


def test_a_sweep_lists_each_distinct_data_set_once(listings):
    same_data = [load_spec("demo", [*TINY, f"train.seed={seed}"]) for seed in range(3)]
    other_batch = load_spec("demo", [*TINY, "train.batch_size=32"])
    smaller = load_spec("demo", [*TINY, "data.num_images=64"])
    specs = [*same_data, other_batch, smaller]
    described = described_data(specs)
    checked = [check_trainable(spec, described) for spec in specs]
    assert listings == [("shapes", 96), ("shapes", 64)]
    assert [c.schedule.steps_per_epoch for c in checked] == [6, 6, 6, 3, 4]
    assert [c.info.num_rows for c in checked] == [96, 96, 96, 96, 64]


def test_a_batch_larger_than_the_data_is_refused_before_anything_is_recorded(workdir):
    with pytest.raises(ValueError, match="train.batch_size: 128 exceeds the 96 training images"):
        specs = [load_spec("demo", TINY), load_spec("demo", [*TINY, "train.batch_size=128"])]
        described = described_data(specs)
        for spec in specs:
            check_trainable(spec, described)
