"""How a worker loop records its run: a small interface the orchestrator implements.

The loops in `workloads/` must stay free of MLflow and of `orchestrator/`, yet rank 0 writes
to MLflow directly. So a loop talks to a `Reporter`; the orchestrator passes an MLflow-backed
one in the train-loop config, and tests pass a `RecordingReporter`. (Not to be confused with
the ablation report of `orchestrator/report/table.py`, which reads what reporters wrote.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class Reporter(Protocol):
    def start(self) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_event(self, metrics: Mapping[str, float], step: int) -> None:
        """Points of something that happened once in this attempt (a resume): written at
        once and kept whatever the attempt does next, even at a step the run already holds
        (where `log_metrics` of a resumed run skips what an earlier attempt wrote)."""
        ...

    def log_checkpoint(
        self, uri: str, epoch: int, step: int, metrics: Mapping[str, float]
    ) -> str | None: ...

    def close(self) -> None: ...


class NullReporter:
    """What ranks other than 0 get: they train but record nothing."""

    def start(self) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_event(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_checkpoint(
        self, uri: str, epoch: int, step: int, metrics: Mapping[str, float]
    ) -> str | None:
        return None

    def close(self) -> None:
        pass


@dataclass
class RecordingReporter:
    """Keeps everything in memory; for running the loop in tests without a tracking server."""

    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    events: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    started: bool = False
    closed: bool = False

    def start(self) -> None:
        self.started = True

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_event(self, metrics: Mapping[str, float], step: int) -> None:
        self.events.append((step, dict(metrics)))

    def log_checkpoint(
        self, uri: str, epoch: int, step: int, metrics: Mapping[str, float]
    ) -> str | None:
        self.checkpoints.append({"uri": uri, "epoch": epoch, "step": step, **metrics})
        return None

    def close(self) -> None:
        self.closed = True
