"""`mimray report`: the ablation table read back from a real SQLite MLflow store.

The store is laid out by the real sweep code (`open_sweep_runs`: parent run, one child run per
trial, sweep_spec.json) and real checkpoints (LoggedModels); only the numbers are chosen here
(epoch losses and eval top-1), so every mean, std and bold cell can be computed by hand.
"""

from __future__ import annotations

import statistics
import time

import pytest
from browser import dump_dom, screenshot
from cli_checks import assert_refused
from click.testing import CliRunner
from tiny_model import tiny_model_yaml

from orchestrator.cli.main import main
from orchestrator.config import load_sweep
from orchestrator.report.render import render_markdown
from orchestrator.report.table import build_report
from orchestrator.sweep.runner import open_sweep_runs
from orchestrator.tracking import (
    CHECKPOINT_EPOCH_TAG,
    EVAL_PROTOCOL_TAG,
    KIND_TAG,
    MODEL_ID_TAG,
    PRETRAIN_RUN_TAG,
    SWEEP_TAG,
    Tracker,
)

EXPERIMENT = "report-test"
SWEEP = """
name: {name}
base:
  method: {{name: emae}}
  model: {model}
  data: {{source: shapes, num_images: 64}}
  train: {{epochs: 3, batch_size: 16, warmup_epochs: 1}}
  tracking: {{experiment: {experiment}}}
sweep:
  grid: {{method.k: {ks}}}
  seeds: {seeds}
"""
# Final epoch/loss of each (K, seed); earlier epochs are higher, so the last one must be read.
FINAL_LOSS = {("2", "0"): 0.50, ("2", "1"): 0.54, ("4", "0"): 0.40, ("4", "1"): 0.46}
# (protocol, checkpoint epoch) -> (K, seed) -> top-1. knn@e1 exists for one trial only.
TOP1 = {
    ("knn", 3): {("2", "0"): 0.30, ("2", "1"): 0.34, ("4", "0"): 0.20, ("4", "1"): 0.22},
    ("linear", 3): {("2", "0"): 0.50, ("2", "1"): 0.40, ("4", "0"): 0.60, ("4", "1"): 0.62},
    ("knn", 1): {("2", "0"): 0.10},
}


def _record_sweep(tmp, tracker: Tracker, name: str, ks: str, seeds: int) -> dict:
    path = tmp / f"{name}.yaml"
    path.write_text(
        SWEEP.format(name=name, experiment=EXPERIMENT, ks=ks, seeds=seeds, model=tiny_model_yaml())
    )
    spec, trials = load_sweep(str(path))
    parent_id, runs = open_sweep_runs(spec, trials, tracker, name)
    ids = {}
    for trial, run in zip(trials, runs, strict=True):
        key = (str(trial.values["method.k"]), str(trial.values["train.seed"]))
        final = FINAL_LOSS[key]
        for epoch, loss in ((1, final + 0.3), (2, final + 0.1), (3, final)):
            tracker.client.log_metric(run.run_id, "epoch/loss", loss, step=epoch)
        tracker.finish_run(run.run_id)
        ids[key] = run.run_id
    tracker.finish_run(parent_id)
    return {"parent": parent_id, "trials": ids}


def _record_eval(
    tracker: Tracker,
    sweep: str,
    trial_id: str,
    protocol: str,
    epoch: int,
    top1: float,
    key="",
    split: str | None = None,
) -> None:
    reporter = tracker.reporter(trial_id, system_metrics=False)
    reporter.start()
    model_id = reporter.log_checkpoint(f"file:///ckpt/{trial_id}/{epoch}", epoch, epoch * 4, {})
    reporter.close()
    handle = tracker.open_run(
        key=f"eval:{trial_id}:{protocol}:e{epoch}{key}",
        params={"protocol": protocol, **({"eval.data.split": split} if split else {})},
        tags={
            KIND_TAG: "eval",
            EVAL_PROTOCOL_TAG: protocol,
            PRETRAIN_RUN_TAG: trial_id,
            MODEL_ID_TAG: model_id,
            CHECKPOINT_EPOCH_TAG: str(epoch),
            SWEEP_TAG: sweep,
        },
        parent_run_id=trial_id,
    )
    tracker.client.log_metric(handle.run_id, f"{protocol}/top1", top1, model_id=model_id)
    if protocol == "knn":
        tracker.client.log_metric(handle.run_id, "knn/top1_1nn", top1 - 0.05)
    tracker.finish_run(handle.run_id)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module: a 2x2 sweep (K in {2, 4} x 2 seeds) with evals, and a
    1-trial sweep without any (creating the SQLite schema alone takes seconds)."""
    tmp = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT)
    ablation = _record_sweep(tmp, tracker, "kgrid", "[2, 4]", seeds=2)
    # An older knn@e3 of (K=2, seed 0), superseded by the one below: it must not count.
    _record_eval(tracker, "kgrid", ablation["trials"][("2", "0")], "knn", 3, 0.99, key=":old")
    time.sleep(0.01)
    for (protocol, epoch), values in TOP1.items():
        for key, top1 in values.items():
            _record_eval(tracker, "kgrid", ablation["trials"][key], protocol, epoch, top1)
    bare = _record_sweep(tmp, tracker, "bare", "[4]", seeds=1)
    return {"uri": uri, "tmp": tmp, "kgrid": ablation, "bare": bare}


def test_table_rows_columns_and_values(store):
    report = build_report(store["uri"], None, "kgrid")  # found without naming the experiment
    assert report.experiment == EXPERIMENT
    assert report.knob_keys == ["method.k"]
    assert [row.label for row in report.rows] == ["k=2", "k=4"]
    assert [c.key for c in report.columns] == ["loss", "knn@e1", "knn@e3", "linear@e3"]
    assert report.eval_runs == 9
    k2, k4 = report.rows
    assert [len(r.trials) for r in report.rows] == [2, 2]
    for row, k in ((k2, "2"), (k4, "4")):
        for column, table in (("loss", FINAL_LOSS), ("knn@e3", TOP1[("knn", 3)])):
            expected = [table[(k, "0")], table[(k, "1")]]
            cell = row.cells[column]
            assert cell.mean == pytest.approx(sum(expected) / 2)
            assert cell.std == pytest.approx(statistics.stdev(expected))
    assert k2.cells["loss"].std == pytest.approx(0.0282843, abs=1e-6)  # |0.50-0.54|/sqrt(2)
    assert k2.cells["knn@e1"].n == 1 and k2.cells["knn@e1"].std is None
    assert "knn@e1" not in k4.cells
    best = {c.key: report.best_rows(c) for c in report.columns}
    # Lower loss wins (K=4: 0.43 vs 0.52); higher top-1 wins (knn: K=2, linear: K=4).
    assert best == {"loss": {1}, "knn@e1": set(), "knn@e3": {0}, "linear@e3": {1}}


def test_markdown_bolds_best_and_marks_missing(store):
    text = render_markdown(build_report(store["uri"], EXPERIMENT, "kgrid"))
    lines = text.splitlines()
    assert "| k | seeds | loss | knn@e1 | knn@e3 | linear@e3 |" in lines
    k2 = next(line for line in lines if line.startswith("| 2 |"))
    k4 = next(line for line in lines if line.startswith("| 4 |"))
    # top-1 in %: knn K=2 32.0 ± 2.8, linear K=4 61.0 ± 1.4; loss K=4 0.4300 ± 0.0424.
    assert k2 == "| 2 | 2 | 0.5200 ± 0.0283 | 10.0 (n=1) | **32.0 ± 2.8** | 45.0 ± 7.1 |"
    assert k4 == "| 4 | 2 | **0.4300 ± 0.0424** | — | 21.0 ± 1.4 | **61.0 ± 1.4** |"


def test_cli_writes_files_and_attaches_them_to_the_parent_run(store, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["report", "kgrid", "--out", str(out), "--tracking-uri", store["uri"]]
    )
    assert result.exit_code == 0, result.output
    assert "knn@e3" in result.stdout and "32.0 ± 2.8" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.md"]
    client = MlflowClient(store["uri"])
    parent = store["kgrid"]["parent"]
    assert sorted(a.path for a in client.list_artifacts(parent, "report")) == [
        "report/report.html",
        "report/report.md",
    ]
    fetched = client.download_artifacts(parent, "report/report.md", str(tmp_path))
    assert open(fetched, encoding="utf-8").read() == (out / "report.md").read_text()
    # Reports get checked in and shared: no path of the machine that made them.
    for page in ("report.md", "report.html"):
        text = (out / page).read_text()
        assert str(store["tmp"]) not in text and "/mlflow.db" in text, page


def test_sweep_without_evaluations_reports_loss_only(store, tmp_path):
    out = tmp_path / "bare"
    result = CliRunner().invoke(
        main,
        [
            "report",
            "bare",
            "--out",
            str(out),
            "--experiment",
            EXPERIMENT,
            "--tracking-uri",
            store["uri"],
        ],
    )
    assert result.exit_code == 0, result.output
    assert "No evaluation runs recorded" in result.stdout
    text = (out / "report.md").read_text()
    assert "| k | seeds | loss |" in text
    assert "| 4 | 1 | 0.4000 (n=1) |" in text  # one row, nothing to compare: no bold
    assert "No evaluation runs recorded" in text


def test_unknown_sweep_or_store_is_one_line_exit_2(store, tmp_path):
    out = tmp_path / "never"
    result = CliRunner().invoke(
        main, ["report", "nope", "--out", str(out), "--tracking-uri", store["uri"]]
    )
    line = assert_refused(result, "no sweep 'nope'", at_start=True)
    assert "bare, kgrid" in line  # the sweeps that do exist
    missing = tmp_path / "missing.db"
    result = CliRunner().invoke(
        main, ["report", "kgrid", "--out", str(out), "--tracking-uri", f"sqlite:///{missing}"]
    )
    assert_refused(result, "no MLflow store", at_start=True)
    assert not out.exists() and not missing.exists()  # nothing written, no empty store made


def test_html_page_renders_in_headless_chromium(store, tmp_path):
    from PIL import Image, ImageStat

    out = tmp_path / "html"
    result = CliRunner().invoke(
        main, ["report", "kgrid", "--out", str(out), "--tracking-uri", store["uri"]]
    )
    assert result.exit_code == 0, result.output
    page = out / "report.html"
    source = page.read_text()
    assert "http://" not in source and "https://" not in source  # self-contained
    dom = dump_dom(page.as_uri())
    assert "<th" in dom and "linear@e3" in dom
    assert "<strong>61.0 ± 1.4</strong>" in dom  # the bold best cell survived rendering
    assert dom.count('<img alt="') == 2 and "data:image/png;base64," in dom
    png = screenshot(page.as_uri(), tmp_path / "report.png")
    with Image.open(png) as image:
        assert image.size == (1280, 2000)
        rgb = image.convert("RGB")
        spread = ImageStat.Stat(rgb.convert("L")).stddev[0]
        pixels = list(rgb.getdata())
    assert spread > 10  # a blank or single-colour page has (almost) none
    # The plots were drawn on the page: the two grid points' lines and markers are in
    # matplotlib's first two colours (C0 blue, C1 orange), which nothing else on the page uses.
    for name, colour in (("C0", (31, 119, 180)), ("C1", (255, 127, 14))):
        near = sum(all(abs(p - c) <= 30 for p, c in zip(px, colour, strict=True)) for px in pixels)
        assert near > 200, f"{near} pixels of the plots' {name} colour on the page"


def test_eval_targets_and_lineage_of_a_sweep(store):
    from orchestrator.config import ConfigError
    from orchestrator.evaluation.checkpoints import resolve_checkpoints
    from orchestrator.report.lineage import lineage

    trials = store["kgrid"]["trials"]
    checkpoints = resolve_checkpoints(store["uri"], "kgrid")  # each trial's last checkpoint
    assert sorted(c.run_id for c in checkpoints) == sorted(trials.values())
    assert {(c.epoch, c.sweep) for c in checkpoints} == {(3, "kgrid")}
    by_parent_id = resolve_checkpoints(store["uri"], store["kgrid"]["parent"])
    assert [c.model_id for c in by_parent_id] == [c.model_id for c in checkpoints]
    with pytest.raises(ConfigError, match="no trial of this sweep has a checkpoint"):
        resolve_checkpoints(store["uri"], "bare")

    tree = lineage(store["uri"], "kgrid")
    assert tree["sweep"]["run_id"] == store["kgrid"]["parent"]
    assert sorted(r["run_id"] for r in tree["runs"]) == sorted(trials.values())
    node = next(r for r in tree["runs"] if r["run_id"] == trials[("2", "0")])
    evals = [(c["epoch"], e["protocol"]) for c in node["checkpoints"] for e in c["evals"]]
    assert sorted(evals) == [(1, "knn"), (3, "knn"), (3, "knn"), (3, "linear")]
    # From one trial: its sweep at the root, that trial alone below it.
    narrow = lineage(store["uri"], trials[("4", "1")])
    assert narrow["sweep"]["name"] == "kgrid"
    assert [r["run_id"] for r in narrow["runs"]] == [trials[("4", "1")]]


def test_upload_process_reports_a_failed_upload_and_leaves_nothing_behind(store, tmp_path):
    """The report's upload runs in a child process that opens the store early: an upload the
    store refuses comes back as an error naming it, and a report that fails before uploading
    leaves no process behind."""
    from orchestrator.tracking.artifacts import ArtifactUploader

    page = tmp_path / "report.md"
    page.write_text("x")
    uploader = ArtifactUploader(store["uri"])
    with pytest.raises(RuntimeError, match="0123456789abcdef0123456789abcdef"):
        uploader.attach("0123456789abcdef0123456789abcdef", [page], "report")
    assert not uploader._process.is_alive()

    unused = ArtifactUploader(store["uri"])
    unused.close()
    assert not unused._process.is_alive()


def test_selection_split_scores_get_their_own_column(tmp_path):
    """Evaluations scored on the selection split (`eval.data.split: selection`) are for
    choosing settings: the report shows them in a column of their own and never averages them
    into the val column that results are reported from."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", EXPERIMENT)
    sweep = _record_sweep(tmp_path, tracker, "sel", "[2, 4]", seeds=1)
    val = {"2": 0.40, "4": 0.60}
    selection = {"2": 0.90, "4": 0.10}
    for k in ("2", "4"):
        trial = sweep["trials"][(k, "0")]
        _record_eval(tracker, "sel", trial, "knn", 3, val[k])
        time.sleep(0.01)  # the selection runs are the newest: they must still not replace val
        _record_eval(tracker, "sel", trial, "knn", 3, selection[k], key=":sel", split="selection")

    report = build_report(tracker.tracking_uri, EXPERIMENT, "sel")
    assert [c.key for c in report.columns] == ["loss", "knn@e3", "knn@e3/selection"]
    for row in report.rows:
        k = row.knobs[0]
        assert row.cells["knn@e3"].values == (val[k],)
        assert row.cells["knn@e3/selection"].values == (selection[k],)
    text = render_markdown(report)
    assert "| k | seeds | loss | knn@e3 | knn@e3/selection |" in text.splitlines()
    assert "`PROTOCOL@eN/selection`: scored on the selection split" in text
