"""Random-search distributions of a sweep (`sweep.search: random`), checked and sampled here.

```yaml
sweep:
  search: random
  num_samples: 8
  sample_seed: 0                                # same seed, same samples: restorable
  space:
    method.mask_ratio: {uniform: [0.5, 0.9]}
    train.blr: {loguniform: [1.0e-4, 1.0e-2]}
    method.k: {choice: [2, 4, 8]}
    model.depth: {randint: [2, 5]}              # 2, 3 or 4: upper bound excluded, as Tune's
```

The samples are drawn once, by the driver, from a seeded generator, so every trial is a
validated run spec with a stable name before anything starts, and `--dry-run` lists them. The
same distributions become Tune's `param_space` (`orchestrator.sweep.space`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("choice", "uniform", "loguniform", "randint")
# Sampled floats keep 6 significant digits: readable in tables, and still continuous enough.
SIGNIFICANT_DIGITS = 6


@dataclass(frozen=True)
class Distribution:
    kind: str  # one of KINDS
    args: tuple[Any, ...]  # choice: the options; others: (low, high)

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.args)
        low, high = self.args
        if self.kind == "randint":
            return rng.randrange(low, high)
        if self.kind == "uniform":
            value = rng.uniform(low, high)
        else:
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        # Rounding must not step outside [low, high], or Tune's domain check would warn.
        return min(max(float(f"{value:.{SIGNIFICANT_DIGITS}g}"), low), high)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(repr(a) for a in self.args)})"
        return f"{self.kind}({self.args[0]:g}, {self.args[1]:g})"


def parse_distribution(key: str, raw: Any) -> Distribution:
    """`{uniform: [low, high]}`-style YAML -> a Distribution, or a ValueError naming `key`."""
    allowed = "one of {choice: [a, b, ...]}, {uniform: [low, high]}, " + (
        "{loguniform: [low, high]}, {randint: [low, high]}"
    )
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise ValueError(f"{key}: expected a distribution; allowed: {allowed} (got {raw!r})")
    ((kind, args),) = raw.items()
    if kind not in KINDS:
        raise ValueError(f"{key}: unknown distribution {kind!r}; allowed: {', '.join(KINDS)}")
    if not isinstance(args, list) or not args:
        raise ValueError(f"{key}: {kind} takes a list; allowed: {allowed} (got {args!r})")
    if kind == "choice":
        return Distribution(kind, tuple(args))
    if len(args) != 2 or not all(_is_number(a) for a in args):
        raise ValueError(f"{key}: {kind} takes [low, high] numbers (got {args!r})")
    low, high = args
    if not low < high:
        raise ValueError(f"{key}: {kind} needs low < high (got {args!r})")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"{key}: loguniform needs 0 < low (got {args!r})")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ValueError(f"{key}: randint takes whole numbers [low, high) (got {args!r})")
    return Distribution(kind, (low, high) if kind == "randint" else (float(low), float(high)))


def draw_samples(
    space: Mapping[str, Distribution], num_samples: int, seed: int
) -> list[dict[str, Any]]:
    """`num_samples` points, each knob drawn from its distribution; the same seed, the same
    points (keys in the space's order)."""
    rng = random.Random(seed)
    return [{key: dist.sample(rng) for key, dist in space.items()} for _ in range(num_samples)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
