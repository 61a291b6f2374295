"""Downstream evaluation, control-plane side: which labelled data an evaluation reads
(`data.py`), the random-init baseline checkpoint (`baseline.py`), and the evaluation runs with
their lineage (`runs.py`). The worker side is `workloads/evaluation/`."""
