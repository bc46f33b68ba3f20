"""Data given to the Python API in memory: ``graft.fit(config, train=df, validation=…)``.

Each set given replaces its source in the config with a placeholder, ``{memory: train}`` (the
column names the source had are kept: they say where to read a DataFrame or a Hugging Face
``Dataset``), so the config validates without a file, and the run directory's config.yaml
still says where the data came from. The data is converted once (:mod:`graft.data.memory`) and
read back by the run through the placeholder; its fingerprint is of its content, so
``resume=True`` with other data is refused as for a changed file. Outside the call that gave
it (``graft fit --resume`` on the command line), a placeholder is an error that says how to
give the data again.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from graft.config import RunConfig, SourceConfig, apply_override, load_config, read_yaml, validate
from graft.data.memory import to_examples
from graft.data.types import Examples
from graft.errors import UsageError

#: The arguments of :func:`graft.fit` that take data, and the config field each replaces.
DATA_FIELDS = {
    "train": "data.train",
    "validation": "data.validation",
    "test": "data.test",
    "target_unlabeled": "data.target_unlabeled",
    "target_labeled": "data.target_labeled",
}
# What a placeholder keeps of the source it replaces: how to read the table, not where it was.
_KEPT = ("text_column", "label_column", "image_column")


def given_data(extra_eval: Mapping[str, Any] | None = None, **sets: Any) -> dict[str, Any]:
    """The sets given, by placeholder name ("train", "extra_eval.shifted"); ``None`` means not
    given. A ``DatasetDict`` given as ``train`` gives its "train" split, and its "validation"
    and "test" splits where those arguments are not given: its splits by name."""
    given = {k: v for k, v in sets.items() if v is not None}
    unknown = sorted(set(given) - DATA_FIELDS.keys())
    if unknown:
        raise UsageError(
            f"unknown data argument {unknown[0]!r}", hint=f"use {', '.join(DATA_FIELDS)}"
        )
    train: Any = given.get("train")
    if type(train).__name__ == "DatasetDict":
        if "train" not in train:
            splits = ", ".join(repr(k) for k in train)
            raise UsageError(
                f"train: the DatasetDict has no split 'train' (splits: {splits})",
                hint="give one split as train=dataset_dict[NAME]",
            )
        for name in ("validation", "test"):
            if name in train and name not in given:
                given[name] = train[name]
        given["train"] = train["train"]
    if extra_eval is not None:
        if not isinstance(extra_eval, Mapping):
            raise UsageError(
                f"extra_eval: a mapping of set names to data, not {type(extra_eval).__name__}",
                hint='e.g. extra_eval={"tweets": tweets_df}',
            )
        given.update({f"extra_eval.{k}": v for k, v in extra_eval.items()})
    return given


def replace_sources(
    data: dict[str, Any], sources: Mapping[str, dict[str, Any]], kept: tuple[str, ...] = _KEPT
) -> None:
    """Put ``sources`` (by set name: "train", "extra_eval.shifted") into the config mapping
    ``data``; of each source replaced, the ``kept`` keys stay (the column names)."""
    section = data.setdefault("data", {})
    if section is None:
        section = data["data"] = {}
    if not isinstance(section, dict):
        raise UsageError("data: is not a section of the config")
    for name, source in sources.items():
        node, key = section, name
        if name.startswith("extra_eval."):
            key = name.split(".", 1)[1]
            if not isinstance(section.get("extra_eval"), dict):
                section["extra_eval"] = {}
            node = section["extra_eval"]
        old = node.get(key)
        node[key] = {**{k: old[k] for k in kept if isinstance(old, dict) and k in old}, **source}


def config_with_data(
    config: RunConfig | Mapping[str, Any] | str | Path,
    overrides: list[str] | tuple[str, ...],
    given: Mapping[str, Any],
) -> RunConfig:
    """The validated config of a call given in-memory data: the config (a YAML path, a
    mapping or a :class:`RunConfig`), its dotted overrides, then the placeholders."""
    origin = "config"
    if isinstance(config, str | Path):
        if not given:
            return load_config(config, overrides)
        data, origin = read_yaml(config), str(config)
        data.pop("compare", None)
        data.pop("search", None)
    elif isinstance(config, RunConfig):
        data = config.to_dict()
    elif isinstance(config, Mapping):
        data = copy.deepcopy(dict(config))
    else:
        raise UsageError(
            f"fit takes a RunConfig, a mapping or a YAML path, not {type(config).__name__}",
            hint='e.g. graft.fit("configs/vader_minilm.yaml") or graft.load_config(...)',
        )
    for override in overrides:
        apply_override(data, override)
    replace_sources(data, {name: {"memory": name} for name in given})
    return validate(data, origin=origin)


def _source(config: RunConfig, name: str) -> SourceConfig:
    if name.startswith("extra_eval."):
        return config.data.extra_eval[name.split(".", 1)[1]]
    source = getattr(config.data, name)
    assert isinstance(source, SourceConfig)
    return source


def convert(config: RunConfig, given: Mapping[str, Any]) -> dict[str, Examples]:
    """Every given set as examples, read with its placeholder's column names."""
    out = {}
    for name, value in given.items():
        src = _source(config, name)
        out[name] = to_examples(
            value,
            name,
            text_column=src.text_column,
            label_column=src.label_column,
            image_column=src.image_column,
            labeled=name != "target_unlabeled",  # its labels are never read
        )
    return out
