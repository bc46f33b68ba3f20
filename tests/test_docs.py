"""Every YAML example in the README and docs is a valid config (or config section) with a plan
that builds, so the documentation cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from graft.compare.spec import parse_spec
from graft.config import validate
from graft.errors import UsageError
from graft.search.space import check_against_config, parse_search
from graft.strategies import build_plan

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Stand-in backbones' groups, bottom to top (EfficientNet-like, BERT-like): a documented plan
# must build on the one whose group names it uses.
GROUPS = [
    ["stem", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4", "head"],
    ["embeddings", *(f"layer.{i}" for i in range(6)), "head"],
]
MINIMAL = {"backbone": {"name": "tf_efficientnet_lite0"}, "data": {"train": {"dataset": "digits"}}}


def _examples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)):
            out.append((f"{doc.name}#{i}", yaml.safe_load(block)))
    return out


EXAMPLES = _examples()


def test_there_are_examples() -> None:
    assert any(name.startswith("README") for name, _ in EXAMPLES)
    assert sum(name.startswith("strategies") for name, _ in EXAMPLES) >= 9


@pytest.mark.parametrize(("name", "example"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_validates_and_its_plan_builds(name: str, example: dict[str, Any]) -> None:
    example = dict(example)
    if "search" in example:  # a `graft search` block: checked by its own model, against the rest
        spec = parse_search(example.pop("search"), origin=name)
        check_against_config(spec, {**MINIMAL, **example}, origin=name)
    if "compare" in example:  # a `graft compare` block: checked by its own model
        spec = parse_spec(example.pop("compare"), origin=name)
        for entry in spec.strategies:
            config = validate(
                {**MINIMAL, **example, "strategy": {"name": entry.name, **entry.params()}},
                origin=name,
            )
            _plan_builds(name, config)
        return
    config = validate({**MINIMAL, **example}, origin=name)  # a section alone: fill the rest
    _plan_builds(name, config)


def _plan_builds(name: str, config: Any) -> None:
    errors = []
    for groups in GROUPS:
        try:
            build_plan(config.strategy.name, config.strategy.params(), groups=groups, epochs=3)
            return
        except UsageError as e:
            errors.append(str(e))
    pytest.fail(f"{name}: the plan builds on no stand-in backbone: {errors}")
