"""The shape of the code and of its surfaces: the CLI and the config schema are pinned by a
snapshot (a change to either is deliberate), name lists are tied to their registries, and the
package's layers hold (no import cycle, no private name imported across modules, the run
directory and reports import no torch)."""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest

import graft
from graft.cli import build_parser
from graft.config import MOVED_KEYS, RunConfig, config_hash, validate

SRC = Path(graft.__file__).parent
SNAPSHOT = Path(__file__).parent / "snapshots" / "cli_and_schema.json"


def _parser_surface(parser: argparse.ArgumentParser) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out["commands"] = {
                name: _parser_surface(sub) for name, sub in sorted(action.choices.items())
            }
        elif not isinstance(action, argparse._HelpAction):
            out[action.dest] = {
                "flags": action.option_strings,
                "nargs": action.nargs,
                "default": action.default if action.default is not argparse.SUPPRESS else None,
                "choices": list(action.choices) if action.choices else None,
            }
    return out


def surface() -> dict[str, Any]:
    return {
        "cli": _parser_surface(build_parser()),
        "config_schema": RunConfig.model_json_schema(),
    }


def test_cli_and_config_schema_match_the_snapshot() -> None:
    """Every command, option, default and choice, and every config field with its type and
    default. After a deliberate change: UPDATE_SNAPSHOTS=1 pytest tests/test_layout.py"""
    current = json.loads(json.dumps(surface(), default=str, sort_keys=True))
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    recorded = json.loads(SNAPSHOT.read_text())
    assert current == recorded, (
        "the CLI or the config schema changed; if deliberate, run "
        "UPDATE_SNAPSHOTS=1 pytest tests/test_layout.py and commit the snapshot"
    )


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_KEYS.items()))
def test_a_moved_config_key_names_its_new_place(old: str, new: str, tmp_path: Path) -> None:
    from graft.cli import main

    config = tmp_path / "old.yaml"
    section, key = old.split(".")
    config.write_text(
        "backbone: {name: test_efficientnet, pretrained: false}\n"
        "data: {train: {dataset: digits}}\n"
        f"{section}: {{{key}: 1}}\n"
        f"output: {{dir: {tmp_path / 'runs'}}}\n"
    )
    assert main(["fit", str(config)]) == 2
    assert main(["validate", str(config)]) == 2
    with pytest.raises(graft.errors.UsageError, match=rf"{old}: moved to {new}"):
        validate(
            {"backbone": {"name": "x"}, "data": {"train": {"dataset": "digits"}}, section: {key: 1}}
        )
    assert not (tmp_path / "runs").exists()


def test_the_config_hash_leaves_out_whole_sections() -> None:
    base = validate({"backbone": {"name": "x"}, "data": {"train": {"dataset": "digits"}}})
    data = base.to_dict()
    moved = json.loads(json.dumps(data))
    moved["hardware"].update(threads=7, num_workers=3, device="cpu", channels_last=True)
    moved["checkpoint"].update(every=5, keep=True)
    moved["output"].update(dir="elsewhere", progress=False)
    assert config_hash(moved) == config_hash(data)
    for section, key, value in [("train", "batch_size", 7), ("optim", "lr", 0.5)]:
        changed = json.loads(json.dumps(data))
        changed[section][key] = value
        assert config_hash(changed) != config_hash(data)


# --------------------------------------------------------------------------- name lists


def _literal(model: Any, field: str) -> tuple[str, ...]:
    annotation = model.model_fields[field].annotation
    values = [a for a in get_args(annotation) if a is not type(None)]
    # `Literal[...] | None` nests the literal one level down.
    flat: list[str] = []
    for v in values:
        flat += list(get_args(v)) if get_args(v) else [v]
    return tuple(flat)


def test_config_name_lists_are_their_registries() -> None:
    from graft.augment import PRESETS
    from graft.config import (
        TASK_LOSSES,
        BackboneConfig,
        DataConfig,
        InitConfig,
        LossConfig,
        OptimConfig,
        ScheduleConfig,
        SourceConfig,
    )
    from graft.data.sources import FORMATS
    from graft.init import HEAD_INITS
    from graft.losses import LOSSES, MULTILABEL_LOSSES, REGRESSION_LOSSES
    from graft.models import families
    from graft.optim import OPTIMIZERS, SCHEDULES

    assert set(_literal(OptimConfig, "name")) == set(OPTIMIZERS)
    assert set(_literal(ScheduleConfig, "name")) == set(SCHEDULES)
    assert set(_literal(DataConfig, "augment")) == set(PRESETS)
    assert set(_literal(LossConfig, "name")) == {*LOSSES, *REGRESSION_LOSSES, *MULTILABEL_LOSSES}
    assert TASK_LOSSES == {
        "classification": LOSSES,
        "regression": REGRESSION_LOSSES,
        "multilabel": MULTILABEL_LOSSES,
    }
    assert set(_literal(SourceConfig, "format")) == set(FORMATS)
    # "default" keeps the head as built; "linear_probe" fits it on cached features (prepare).
    assert set(_literal(InitConfig, "head")) == {"default", "linear_probe", *HEAD_INITS}
    assert set(_literal(BackboneConfig, "source")) == {"auto", *families()}


def test_the_cli_format_choices_are_the_data_formats() -> None:
    from graft.cli.options import DATA_FORMATS
    from graft.data.sources import FORMATS

    assert tuple(DATA_FORMATS) == FORMATS


def test_an_option_of_the_other_modality_is_refused_with_its_field(tiny_bert_dir: Path) -> None:
    from graft.errors import UsageError
    from graft.models import build_backbone
    from graft.models.timm_backbone import build_timm

    image = {"name": "test_efficientnet", "num_classes": 2, "pretrained": False}
    with pytest.raises(UsageError, match=r"^backbone\.pooling: does not apply to image"):
        build_backbone(**image, pooling="cls")
    with pytest.raises(UsageError, match=r"backbone\.trust_remote_code: does not apply to image"):
        build_backbone(**image, trust_remote_code=True)
    with pytest.raises(UsageError, match=r"^data\.image_size: does not apply to text"):
        build_backbone(f"hf:{tiny_bert_dir}", num_classes=2, pretrained=False, image_size=32)
    with pytest.raises(TypeError):  # a builder swallows no argument it does not take
        build_timm("test_efficientnet", num_classes=2, pretrained=False, pooling="cls")
    assert build_backbone(**image, image_size=32).preprocess.image_size == 32


# --------------------------------------------------------------------------- layers


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _top_level_imports(path: Path, module: str) -> list[ast.ImportFrom | ast.Import]:
    """Imports executed when the module loads (not those inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: list[ast.ImportFrom | ast.Import] = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            found += [n for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)]
    return found


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def test_no_private_name_is_imported_across_modules() -> None:
    bad = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("graft"):
                bad += [
                    f"{module}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not bad, "\n".join(bad)


def test_the_package_has_no_import_cycle() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _top_level_imports(path, module):
            targets = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [_resolve(node, module, is_package)]
                + [f"{_resolve(node, module, is_package)}.{a.name}" for a in node.names]
            )
            graph[module] |= {t for t in targets if t in modules and t != module}

    # A package importing its own submodules (to re-export them) is not a cycle of layers.
    def edges(m: str) -> set[str]:
        return {t for t in graph[m] if not (m and t.startswith(m + "."))}

    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for t in sorted(edges(m)):
            if state.get(t) == 1:
                cycle.extend([*stack[stack.index(t) :], t] if t in stack else [m, t])
                return True
            if state.get(t) is None and visit(t, [*stack, t]):
                return True
        state[m] = 2
        return False

    for m in sorted(graph):
        if state.get(m) is None and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_run_directory_reports_and_statistics_import_no_torch() -> None:
    code = (
        "import sys, graft.rundir, graft.reports.run, graft.reports.compare, "
        "graft.reports.search, graft.reports.merging, graft.reports.benchmark, "
        "graft.compare.stats, graft.config; "
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_module_is_over_600_lines() -> None:
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
