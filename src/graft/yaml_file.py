"""Reading a YAML config file: UTF-8, safe loading, a key given twice refused, and errors that
name the file, line and column."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from graft.errors import UsageError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: plain YAML keeps the
    last silently, so a forgotten second ``epochs:`` would quietly win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping, unvalidated; errors name the file and line."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a config file", hint="give a YAML file")
    if not path.exists():
        raise UsageError(f"{path}: config file not found", hint="give the path to a YAML config")
    if not path.is_file():  # a FIFO would block, a device would be read forever
        raise UsageError(f"{path}: not a regular file", hint="give the path to a YAML config")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise UsageError(f"{path}:{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"{path}: the config must be a mapping of sections, not {type(data).__name__}"
        )
    return data
