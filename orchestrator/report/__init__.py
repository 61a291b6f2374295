"""The read side for people: the ablation table (`table.py`), its Markdown and HTML
(`render.py`, `plots.py`), the papers' directions (`paper_directions.py`) and the
lineage of runs (`lineage.py`), all read through `orchestrator/tracking/`."""
