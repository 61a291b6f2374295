"""`data.split: selection`: an evaluation fits on the first 80% of the train split and scores on
its last 20%, never reading val; bad values are refused with one line, exit 2. Real local Ray
reads built-in `digits`; no worker group starts."""

from __future__ import annotations

import numpy as np
import pytest
from cli_checks import assert_refused
from click.testing import CliRunner

from orchestrator.cli.main import main
from orchestrator.config import EvalSpec
from orchestrator.evaluation.data import describe_eval_data, eval_datasets, labelled_dataset

PRETRAIN = {"data": {"source": "digits"}, "model": {"img_size": 16}}


def _rows(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a dataset, in the order an evaluation reads them."""
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    return (
        np.concatenate([b["image"] for b in batches]),
        np.concatenate([b["label"] for b in batches]),
    )


def test_selection_split_cuts_train_in_two_and_never_reads_val(ray_session):
    spec = EvalSpec(protocol="linear", data={"split": "selection"})
    data = describe_eval_data(spec, PRETRAIN)
    fit, score = (_rows(d) for d in eval_datasets(data, seed=0).values())
    whole = describe_eval_data(EvalSpec(protocol="linear"), PRETRAIN)
    train = _rows(labelled_dataset(whole.train, 16, 0))
    val = _rows(labelled_dataset(whole.val, 16, 0))

    # digits: 1,438 train images, the first 1,150 fit and the last 288 score.
    assert (len(fit[1]), len(score[1])) == (1150, 288) == (data.train.num_rows, data.val.num_rows)
    # Fit then score is the train split itself, row for row: the parts are disjoint and
    # cover train only.
    np.testing.assert_array_equal(np.concatenate([fit[0], score[0]]), train[0])
    np.testing.assert_array_equal(np.concatenate([fit[1], score[1]]), train[1])
    val_images = {image.tobytes() for image in val[0]}
    assert not any(image.tobytes() in val_images for image in score[0]), "scored on val images"
    assert (data.train.split, data.val.split) == ("train[:1150]", "train[1150:]")


def test_default_split_keeps_fingerprints_of_earlier_evaluations():
    # Recorded before `data.split` existed: the same fingerprint finds the same eval run.
    assert EvalSpec(protocol="knn").fingerprint() == "1b2a2305b36a"
    assert EvalSpec(protocol="knn", data={"split": "selection"}).fingerprint() != "1b2a2305b36a"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("data.split=test", "data.split: Input should be 'val' or 'selection' (got 'test')"),
        ("data.val_images=5", "data.val_images: not read with split selection"),
    ],
)
def test_bad_split_settings_are_refused(workdir, setting, expected):
    args = ["eval", "anything", "--protocol", "knn", "--set", "data.split=selection"]
    outcome = CliRunner().invoke(main, [*args, "--set", setting])
    assert_refused(outcome, expected)
