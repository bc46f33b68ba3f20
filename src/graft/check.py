"""``graft validate``: build everything a run would, from a config file, and write nothing.

The data are read and split, the backbone is built and initialized, the plan, loaders,
optimizer, schedule and objective are made and checked (:func:`graft.prepare.prepare`); a
``compare:`` block is checked with every strategy's plan built on the backbone's groups, a
``search:`` block with its space against the config. Every mistake a run would refuse surfaces
here, with the same message; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graft.compare.spec import PlannedRun, compare_dir_for, load_compare, plan_runs
from graft.config import RunConfig, load_config
from graft.console import RunLog
from graft.phases import apply_phase, group_table
from graft.prepare import Prepared, prepare
from graft.safe_load import weights_only_loading
from graft.strategies import build_plan
from graft.strategies.plan import Plan
from graft.yaml_file import read_yaml


@dataclass
class Checked:
    """What :func:`check_config` built: the prepared run, and the plans of a compare block."""

    config: RunConfig
    prepared: Prepared
    compare_plans: dict[str, Plan] = field(default_factory=dict)
    search_parameters: list[str] = field(default_factory=list)


def check_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), log: RunLog | None = None
) -> Checked:
    """Check a config file as ``graft fit`` (and ``compare`` / ``search``, for their blocks)
    would, print the plan table of each phase, and return what was built. Raises the
    :class:`~graft.errors.GraftError` a run would raise."""
    with weights_only_loading():
        return _check(path, overrides, log or RunLog())


def _check(path: str | Path, overrides: list[str] | tuple[str, ...], log: RunLog) -> Checked:
    data = read_yaml(path)
    search_parameters: list[str] = []
    if "search" in data:
        from graft.search.study import load_search_config

        _, spec = load_search_config(path, overrides)
        search_parameters = list(spec.space)
    compare_runs: list[PlannedRun] = []
    if "compare" in data:
        base, block = load_compare(path, overrides)
        if block is not None:  # every strategy x seed config, its overrides applied, validated
            where = compare_dir_for(base, block, Path(path).stem)
            compare_runs = plan_runs(base, block, where, str(path))
    config = load_config(path, overrides)
    prep = prepare(config, log)
    groups = prep.backbone.groups
    for index, phase in enumerate(prep.plan.phases):
        apply_phase(groups, phase)
        log.phase_table(index, phase.name, group_table(groups, phase, config.optim.lr))
    plans: dict[str, Plan] = {}
    for run in compare_runs:
        if run.label not in plans:
            plans[run.label] = build_plan(
                run.config.strategy.name,
                run.config.strategy.params(),
                groups=prep.backbone.group_names(),
                epochs=run.config.train.epochs,
            )
    if plans:
        log(
            "compare: "
            + ", ".join(
                f"{key} ({', '.join(f'{p.name} {p.epochs} ep' for p in plan.phases)})"
                for key, plan in plans.items()
            )
        )
    if search_parameters:
        log(f"search: {len(search_parameters)} parameters ({', '.join(search_parameters)})")
    return Checked(config, prep, plans, search_parameters)
