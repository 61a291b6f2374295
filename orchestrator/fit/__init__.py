"""Fitting on Ray, shared by pretrain runs and evaluations: connecting to Ray and the
worker and Ray Data budgets (`ray_setup.py`), one-worker runs in the calling process
(`in_process.py`). It imports neither `pretrain/` nor `evaluation/`."""
