"""Ablation sweeps on Ray Tune: the set-up and the Tune run (`runner.py`), one trial
(`trial.py`), Tune's search space (`space.py`), where trial drivers run (`placement.py`),
the progress line (`progress.py`), the outcomes (`outcomes.py`), the dry run (`plan.py`).
Nothing is imported here: the dry run reads its plan without loading Tune."""
