"""The typed run config: YAML + dotted overrides, errors that name the field, shipped configs."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from conftest import write_yaml

from graft.config import OptimConfig, apply_override, dump_config, load_config, validate
from graft.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))

BASE: dict[str, Any] = {
    "backbone": {"name": "tf_efficientnet_lite0"},
    "data": {"train": {"dataset": "fashion_mnist"}},
}


@pytest.fixture
def base_file(tmp_path: Path) -> Path:
    return write_yaml(tmp_path / "run.yaml", BASE)


def usage_error(path: Path | None, *overrides: str) -> str:
    with pytest.raises(UsageError) as ei:
        load_config(path, list(overrides))
    return str(ei.value)


# --------------------------------------------------------------------------- overrides and types


def test_yaml_and_typed_overrides(base_file: Path) -> None:
    cfg = load_config(
        base_file,
        [
            "optim.lr=3e-4",  # YAML 1.1 reads this as a string; the field makes it a float
            "train.epochs=2",
            "output.progress=false",
            "data.image_size=null",
            "strategy.name=custom",
            "strategy.phases=[{train: head, epochs: 1}, {train: all}]",
            "data.train_size=100",
            "backbone.head_dropout=0.25",
        ],
    )
    assert cfg.optim.lr == 3e-4 and type(cfg.optim.lr) is float
    assert cfg.train.epochs == 2 and type(cfg.train.epochs) is int
    assert cfg.output.progress is False
    assert cfg.data.image_size is None
    assert cfg.data.train_size == 100
    assert cfg.backbone.head_dropout == 0.25
    assert cfg.strategy.name == "custom"
    assert cfg.strategy.params() == {"phases": [{"train": "head", "epochs": 1}, {"train": "all"}]}
    # Untouched values come from the file and the defaults.
    assert cfg.backbone.name == "tf_efficientnet_lite0"
    assert cfg.data.train.dataset == "fashion_mnist"
    assert cfg.optim == OptimConfig(lr=3e-4)  # the rest of the section: defaults


def test_override_creates_sections_and_later_wins(base_file: Path) -> None:
    cfg = load_config(
        base_file,
        [
            "data.test.dataset=fashion_mnist",
            "data.test.split=test",
            "train.epochs=5",
            "train.epochs=7",
        ],
    )
    assert cfg.data.test is not None and cfg.data.test.split == "test"
    assert cfg.train.epochs == 7


def test_override_value_keeps_equals_signs() -> None:
    data: dict[str, Any] = {}
    apply_override(data, "output.name=a=b")
    assert data == {"output": {"name": "a=b"}}


def test_list_override() -> None:
    data: dict[str, Any] = {}
    apply_override(data, "strategy.groups=[stem, 'blocks.0', head]")
    apply_override(data, "a.b.c=[1, 2.5]")
    assert data == {
        "strategy": {"groups": ["stem", "blocks.0", "head"]},
        "a": {"b": {"c": [1, 2.5]}},
    }


def test_no_file_only_overrides() -> None:
    cfg = load_config(None, ["backbone.name=minilm", "data.train.dataset=vader_movies"])
    assert cfg.backbone.name == "minilm" and cfg.train.epochs == 3


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("where", ["override", "file"])
def test_unknown_key_names_the_field_path(tmp_path: Path, where: str) -> None:
    if where == "override":
        msg = usage_error(write_yaml(tmp_path / "r.yaml", BASE), "train.epochz=2")
    else:
        path = write_yaml(tmp_path / "r.yaml", {**BASE, "train": {"epochz": 2}})
        msg = usage_error(path)
        assert str(path) in msg
    assert "train.epochz" in msg and "unknown field" in msg


def test_unknown_section(base_file: Path) -> None:
    msg = usage_error(base_file, "trian.epochs=2")
    assert "trian" in msg and "unknown field" in msg


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.epochs=many", "train.epochs"),
        ("train.epochs=2.5", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("optim.lr=fast", "optim.lr"),
        ("optim.lr=-1", "optim.lr"),
        ("optim.name=adamq", "optim.name"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("backbone.pretrained=maybe", "backbone.pretrained"),
        ("data.train=[1, 2]", "data.train"),
    ],
)
def test_wrong_type_names_the_field(base_file: Path, override: str, field: str) -> None:
    msg = usage_error(base_file, override)
    assert f"  {field}:" in msg, msg
    assert str(base_file) in msg
    assert override.split("=", 1)[1].split(",")[0].strip("[") in msg  # the bad value is shown


def test_every_bad_field_is_reported(base_file: Path) -> None:
    msg = usage_error(base_file, "train.epochs=x", "optim.lr=y", "train.epochz=1")
    assert "train.epochs" in msg and "optim.lr" in msg and "train.epochz" in msg


def test_missing_required_field(tmp_path: Path) -> None:
    msg = usage_error(write_yaml(tmp_path / "r.yaml", {"data": BASE["data"]}))
    assert "backbone" in msg and "Field required" in msg


def test_data_source_needs_exactly_one_origin(base_file: Path) -> None:
    msg = usage_error(base_file, "data.train.path=x.csv")
    assert "data.train" in msg and "exactly one" in msg


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("backbone:\n  name: x\ndata: {train: [unclosed\n  more: 1\n", encoding="utf-8")
    msg = usage_error(path)
    assert str(path) in msg and "invalid YAML" in msg
    assert "line 3" in msg or "line 4" in msg


def test_yaml_bad_indentation_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "indent.yaml"
    path.write_text("backbone:\n  name: x\n pretrained: true\n", encoding="utf-8")
    msg = usage_error(path)
    assert "line 3" in msg


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    assert "mapping" in usage_error(path)


def test_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("backbone: {name: caf\xe9}\n".encode("latin-1"))
    assert "UTF-8" in usage_error(path)


def test_missing_config_file(tmp_path: Path) -> None:
    msg = usage_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "not found" in msg


@pytest.mark.parametrize("bad", ["foo", "=3", "a..b=1", ".a=1", "a.=1", ""])
def test_malformed_override(base_file: Path, bad: str) -> None:
    msg = usage_error(base_file, bad)
    assert "malformed override" in msg and repr(bad) in msg


def test_override_into_a_value_is_refused(base_file: Path) -> None:
    msg = usage_error(base_file, "optim.lr=0.1", "optim.lr.x=1")
    assert "optim.lr" in msg and "not a section" in msg
    # Not set before: the section is created, and validation names the field instead.
    assert "optim.lr:" in usage_error(base_file, "optim.lr.x=1")


# --------------------------------------------------------------------------- round trip


def test_dump_then_load_gives_the_same_config(tmp_path: Path, base_file: Path) -> None:
    cfg = load_config(base_file, ["strategy.name=custom", "strategy.phases=[{train: all}]"])
    again = tmp_path / "dumped.yaml"
    again.write_text(dump_config(cfg), encoding="utf-8")
    assert load_config(again) == cfg
    assert validate(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- shipped configs


def test_there_are_shipped_configs() -> None:
    assert SHIPPED, "configs/*.yaml is empty"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_config_loads_and_refers_to_known_things(path: Path) -> None:
    from graft.data import get_dataset
    from graft.models import resolve_source
    from graft.strategies import get_strategy, strategies

    cfg = load_config(path)
    # Names in it resolve: backbone, datasets, strategy and its parameters.
    family, _ = resolve_source(cfg.backbone.name, cfg.backbone.source)
    assert family in {"timm", "hf", "torchvision"}
    sources = [cfg.data.train, cfg.data.validation, cfg.data.test, *cfg.data.extra_eval.values()]
    for src in sources:
        if src is not None and src.dataset is not None:
            get_dataset(src.dataset)
    assert cfg.strategy.name in strategies()
    accepted = inspect.signature(get_strategy(cfg.strategy.name)).parameters
    assert set(cfg.strategy.params()) <= set(accepted) - {"groups", "epochs"}
