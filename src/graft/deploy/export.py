"""``graft export``: a graft model in a standard format, so it is not locked into graft.

Every format is checked against eager PyTorch before it is kept (:mod:`graft.deploy.parity`),
and written into a temporary folder renamed at the end: a failed export leaves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from graft.artifact import LoadedModel, require_classifier
from graft.atomic import check_target, staged_dir
from graft.deploy.variants import load_predictor
from graft.errors import UsageError

FORMATS = ("onnx", "hf", "timm", "torchscript")


def exporter(fmt: str) -> Callable[[LoadedModel, Path], dict[str, Any]]:
    """The function that writes format ``fmt`` into a folder."""
    if fmt == "onnx":
        from graft.deploy.onnx_export import export_onnx

        return export_onnx
    from graft.deploy import formats

    writers: dict[str, Callable[[LoadedModel, Path], dict[str, Any]]] = {
        "hf": formats.export_hf,
        "timm": formats.export_timm,
        "torchscript": formats.export_torchscript,
    }
    return writers[fmt]


def export(
    model_path: str | Path, fmt: str, output: str | Path, *, force: bool = False
) -> dict[str, Any]:
    """Export the graft model at ``model_path`` (a run directory or a model folder) as ``fmt``
    into the folder ``output``; return what was written (files, parity figures)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    target = Path(output)
    check_target(target, force)
    model = load_predictor(model_path, "torch")
    require_classifier(model, "graft export")
    assert isinstance(model, LoadedModel)
    write = exporter(fmt)
    with staged_dir(target, f"{fmt} export") as tmp:
        summary = write(model, tmp)
    return {"output": str(target), **summary}
