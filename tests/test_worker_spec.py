"""The spec workers are handed is the spec the orchestrator validated, key for key and typed.

Workers read the JSON dump of a validated `RunSpec` through the TypedDicts of
`workloads/run_spec.py` and never supply defaults of their own: a section field added, renamed
or removed on one side only would otherwise leave a worker reading a key that is not there, or
silently ignoring a new setting.
"""

from __future__ import annotations

import typing

import pytest

from orchestrator.config import EvalSpec, RunSpec
from workloads import run_spec

SECTIONS = {
    "model": run_spec.ModelSection,
    "data": run_spec.DataSection,
    "train": run_spec.TrainSection,
    "scaling": run_spec.ScalingSection,
    "tracking": run_spec.TrackingSection,
    "storage": run_spec.StorageSection,
}


def test_the_dump_has_exactly_the_sections_workers_read():
    dump = RunSpec().model_dump(mode="json")
    assert set(dump) == set(typing.get_type_hints(run_spec.RunSpecDump))


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_each_section_has_exactly_the_keys_and_value_types_workers_read(section):
    dump = RunSpec().model_dump(mode="json")[section]
    hints = typing.get_type_hints(SECTIONS[section])
    assert set(dump) == set(hints), f"{section}: orchestrator and worker keys differ"
    for key, value in dump.items():
        assert _fits(value, hints[key]), f"{section}.{key}: {value!r} is not {hints[key]}"


EVAL_SECTIONS = {
    "knn": run_spec.KnnSection,
    "linear": run_spec.LinearSection,
    "finetune": run_spec.FinetuneSection,
}


@pytest.mark.parametrize("protocol", ["knn", "linear", "finetune"])
def test_an_eval_dump_has_exactly_the_keys_and_value_types_evaluation_workers_read(protocol):
    dump = EvalSpec(protocol=protocol).model_dump(mode="json")
    hints = typing.get_type_hints(run_spec.EvalSpecDump)
    assert set(dump) == set(hints)
    for key, value in dump.items():
        assert _fits(value, hints[key]), f"eval.{key}: {value!r} is not {hints[key]}"
    for section, typed in EVAL_SECTIONS.items():
        section_hints = typing.get_type_hints(typed)
        assert set(dump[section]) == set(section_hints), f"eval.{section}: keys differ"
        for key, value in dump[section].items():
            assert _fits(value, section_hints[key]), f"eval.{section}.{key}: {value!r}"


def _fits(value: object, hint: object) -> bool:
    """Whether a JSON value is of the (simple) type a TypedDict field declares."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_fits(value, arg) for arg in args)
    if typing.is_typeddict(hint):
        return isinstance(value, dict)  # its keys: checked as a section of its own
    if hint is type(None):
        return value is None
    if origin in (list, dict):
        return isinstance(value, origin)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)  # type: ignore[arg-type]
