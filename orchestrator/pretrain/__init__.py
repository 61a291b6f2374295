"""One pretrain run: before Ray (`prepare.py`: name, storage, the data check, its MLflow
record), its Ray Train trainer (`trainer.py`) and its launch with the evaluations after
it (`launch.py`)."""
