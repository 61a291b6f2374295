"""Fitting on Ray, shared by pretrain runs and evaluations: connecting to Ray and the
worker and Ray Data budgets (`ray_setup.py`), one-worker runs in the calling process
(`in_process.py`), and `fit` (`fit_call.py`), which runs a trainer and hands Ctrl-C back to
the caller afterwards. It imports neither `pretrain/` nor `evaluation/`."""
