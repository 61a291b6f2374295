"""Paper directions in `mimray report`: the seeds' pairs found among a sweep's rows, compared
metric by metric. Reports are built from numbers chosen here, so every verdict is known."""

from __future__ import annotations

from orchestrator.report.paper_directions import compare_pairs
from orchestrator.report.render import render_markdown
from orchestrator.report.table import Cell, Column, Report, Row, TrialRecord, row_label

KNOBS = ["method.name", "method.mask_ratio", "method.k", "method.gamma", "method.gap",
         "method.delta_r"]  # fmt: skip
KNN_E0 = Column("knn@e0", "knn/top1", True, "knn", 0)
KNN = Column("knn@e20", "knn/top1", True, "knn", 20)
LINEAR = Column("linear@e20", "linear/top1", True, "linear", 20)
LOSS = Column("loss", "epoch/loss", False)


def _row(knobs: tuple, cells: dict[str, tuple[float, ...]]) -> Row:
    trials = [TrialRecord(f"r{i}", f"t{i}", i, str(i), knobs, "FINISHED", ()) for i in range(3)]
    return Row(knobs, row_label(KNOBS, knobs), trials, {k: Cell(v) for k, v in cells.items()})


def _report(rows: list[Row]) -> Report:
    return Report("seed-directions", "exp", "sqlite:///x", "p", KNOBS, [LOSS, KNN_E0, KNN, LINEAR],
                  rows, [], 0)  # fmt: skip


MAE = _row(
    ("mae", "0.75", None, None, None, None),
    {"knn@e0": (0.6, 0.6, 0.6), "knn@e20": (0.80, 0.82, 0.81), "linear@e20": (0.90, 0.91, 0.92)},
)
EMAE = _row(  # knn clearly ahead of MAE, linear behind within noise
    ("emae", None, "4", None, None, None),
    {"knn@e0": (0.905,) * 3, "knn@e20": (0.90, 0.91, 0.92), "linear@e20": (0.89, 0.92, 0.90)},
)
SBAM = _row(  # behind MAE on both, clearly; delta_r is SBAM's alone, so no reason not to pair
    ("sbam", None, None, "0.75", None, "0.0"),
    {"knn@e20": (0.70, 0.71, 0.72), "linear@e20": (0.80, 0.81, 0.82)},
)


def _latent(gap: str, ratio: str, top1: float) -> Row:
    return _row(("latent_mim", ratio, None, None, gap, None), {"knn@e20": (top1, top1 + 0.01)})


def test_each_claim_pairs_its_two_arms_and_judges_every_final_metric():
    pairs = {p.claim.name.split()[0]: p for p in compare_pairs(_report([MAE, EMAE, SBAM]))}
    assert set(pairs) == {"EMAE", "SBAM"}  # no Latent MIM rows: no such pair
    emae = pairs["EMAE"]
    assert (emae.better, emae.worse) == (EMAE, MAE)
    # knn@e0 (the untrained encoder) is not a pretraining result: only @e20 columns count.
    assert [c.column.key for c in emae.comparisons] == ["knn@e20", "linear@e20"]
    assert [c.verdict for c in emae.comparisons] == ["agrees (apart)", "disagrees (overlap)"]
    assert emae.verdict == "mixed"
    sbam = pairs["SBAM"]
    assert [c.verdict for c in sbam.comparisons] == ["disagrees (apart)", "disagrees (apart)"]
    assert sbam.verdict == "disagrees"


def test_latent_gap_pairs_only_rows_equal_in_the_other_knobs():
    rows = [_latent("0", "0.75", 0.5), _latent("4", "0.75", 0.6), _latent("0", "0.9", 0.7),
            _latent("4", "0.9", 0.65)]  # fmt: skip
    pairs = compare_pairs(_report(rows))
    assert [(p.better.knobs[1], p.better.knobs[4], p.worse.knobs[4]) for p in pairs] == [
        ("0.75", "4", "0"),
        ("0.9", "4", "0"),
    ]
    assert [p.verdict for p in pairs] == ["agrees", "disagrees"]


def test_markdown_states_each_pair_with_mean_std_and_verdict():
    text = render_markdown(_report([MAE, EMAE, SBAM]))
    lines = text.splitlines()
    assert "## Paper directions" in lines
    assert "### EMAE K=4 vs MAE r=0.75, equal epochs: mixed" in lines
    assert "| knn@e20 | 91.0 ± 1.0 | 81.0 ± 1.0 | +10.0 | agrees (apart) |" in lines
    assert "### SBAM vs random masking, ratio 0.75: disagrees" in lines
    assert any(line.startswith("- `PROTOCOL@e0`: the random-init baseline") for line in lines)


def test_each_row_is_compared_with_its_own_random_init():
    text = render_markdown(_report([MAE, EMAE]))
    lines = text.splitlines()
    assert "## Pretrained vs random init" in lines
    # MAE: knn 81.0 ± 1.0 vs 60.0 ± 0.0 at e0; EMAE's untrained encoder is within noise.
    mae, emae = "| name=mae, mask_ratio=0.75 |", "| name=emae, k=4 |"
    assert f"{mae} knn@e20 | 81.0 ± 1.0 | 60.0 ± 0.0 | +21.0 | helps (apart) |" in lines
    assert f"{emae} knn@e20 | 91.0 ± 1.0 | 90.5 ± 0.0 | +0.5 | helps (overlap) |" in lines
    # linear has no @e0 column: nothing to compare it with.
    assert not any(line.startswith(f"{mae} linear@e20") for line in lines)


def test_one_seed_gets_a_direction_but_no_judgement_of_noise():
    one_seed_mae = _row(MAE.knobs, {"knn@e20": (0.80,)})
    one_seed_sbam = _row(SBAM.knobs, {"knn@e20": (0.85,)})
    (pair,) = compare_pairs(_report([one_seed_mae, one_seed_sbam]))
    (comparison,) = pair.comparisons
    assert comparison.apart is None
    assert comparison.verdict == "agrees (n=1, no spread)"
    assert pair.verdict == "agrees"
