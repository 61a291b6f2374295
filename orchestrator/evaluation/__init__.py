"""Downstream evaluation, control-plane side: which labelled data an evaluation reads
(`data.py`), which checkpoints a target names (`checkpoints.py`), one evaluation run with its
lineage (`runs.py`), a pretrain spec's chained `eval:` list (`chained.py`) and the random-init
baseline checkpoint (`baseline.py`). The worker side is `workloads/evaluation/`."""
