"""Any saved variant of a model, loaded by what its folder holds: a graft PyTorch model
(``model.safetensors``; pruned and distilled models are of this kind) or an ONNX one (exported
or quantized). ``graft eval``, ``graft predict`` and ``graft benchmark`` use this, so the same
commands work at every stage."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from graft.artifact import META, Predictor, load_model, not_a_model_folder
from graft.config import load_config
from graft.data.types import Examples
from graft.deploy.onnx_model import FORMAT_ONNX, ONNX_FILE, is_onnx_folder, load_onnx_model
from graft.errors import DataError, UsageError
from graft.rundir import CONFIG, MODEL_DIR, read_run_meta
from graft.runtime import Precision

Backend = str  # "auto" | "torch" | "onnxruntime"
BACKENDS = ("auto", "torch", "onnxruntime")


def model_folder(path: str | Path) -> Path:
    """The model folder of ``path``: the folder itself, or its ``model/`` (a run directory, or
    a directory written by export, quantize, prune, interpolate or soup)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.name == ONNX_FILE:
        path = path.parent
    if path.is_file():
        raise DataError(
            f"{path}: give a model folder (or a run directory), not a file",
            hint="graft models are folders: model.safetensors or model.onnx + graft_model.json",
        )
    if (path / MODEL_DIR).is_dir():
        path = path / MODEL_DIR
    return path


def backend_of(folder: Path) -> str:
    """The engine a model folder's weights are for: ``onnxruntime`` or ``torch``."""
    return "onnxruntime" if is_onnx_folder(folder) else "torch"


def load_predictor(
    path: str | Path, backend: Backend = "auto", threads: int | None = None
) -> Predictor:
    """The model at ``path`` (any variant) on ``backend``: ``auto`` is the one its weights are
    for; asking an ONNX (or quantized) model for ``torch`` is refused, as is asking a PyTorch
    model for ``onnxruntime`` (export it first: the export checks its parity)."""
    folder, engine = resolve_variant(path, backend)
    if engine == "onnxruntime":
        return load_onnx_model(folder, threads)
    return load_model(folder)


def resolve_variant(path: str | Path, backend: Backend = "auto") -> tuple[Path, str]:
    """The model folder at ``path`` and the engine that will run it (``torch`` or
    ``onnxruntime``), with every check :func:`load_predictor` makes before it reads the
    weights: quick, for a command that loads the model later (``graft serve``)."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    folder = model_folder(path)
    native = backend_of(folder)
    if backend not in ("auto", native):
        kind = "an ONNX model" if native == "onnxruntime" else "a PyTorch graft model"
        fix = (
            "use --backend onnxruntime (or auto)"
            if native == "onnxruntime"
            else "export it first: graft export MODEL --format onnx -o DIR"
        )
        raise UsageError(f"{folder}: is {kind}; it cannot run on {backend}", hint=fix)
    if native == "onnxruntime":
        return folder, native
    if not (folder / META).is_file() and (folder / "config.json").is_file():
        raise DataError(
            f"{folder}: a Hugging Face or timm folder (graft export --format hf/timm), not a "
            "graft model",
            hint="load it with transformers or timm (its README.md says how); graft runs graft "
            "and ONNX models",
        )
    if not (folder / META).is_file():
        raise not_a_model_folder(folder)
    if declared_format(folder) not in (None, FORMAT_ONNX):
        raise DataError(
            f"{folder}: a {declared_format(folder)} export, which graft does not run",
            hint="load it as its README.md says; graft runs graft and ONNX models",
        )
    return folder, native


def declared_format(folder: Path) -> str | None:
    """The ``format`` a folder's ``graft_model.json`` declares (``None``: a graft PyTorch
    model, or a description too damaged to say; :func:`load_model` then reports it)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return str(fmt) if fmt is not None else None


def run_dir_of_variant(model: Predictor) -> Path | None:
    """The directory whose ``config.yaml`` describes the data the model was trained and
    measured on: its own folder (an export) or the one above (a run's ``model/``)."""
    for candidate in (model.folder, model.folder.parent):
        if (candidate / CONFIG).is_file():
            return candidate
    return None


def variant_sets(model: Predictor, names: tuple[str, ...] = ("test",)) -> dict[str, Examples]:
    """The named sets (``validation``, ``test``, ``train``) of the run the model comes from,
    rebuilt from its config. A changed dataset (another fingerprint than the run's) is refused:
    its numbers would not be comparable."""
    from graft.checkpoint import data_fingerprint
    from graft.run_data import load_splits, unlabeled_sets

    run_dir = run_dir_of_variant(model)
    if run_dir is None:
        raise DataError(
            f"{model.folder}: no config.yaml beside the model: the data it was measured on is "
            "unknown",
            hint="give a run directory (or a folder graft export/quantize/prune wrote), or "
            "name the data (--dataset / --path)",
        )
    config = load_config(run_dir / CONFIG)
    splits = load_splits(config.data, config.task)
    recorded = read_run_meta(run_dir).get("data_fingerprint")
    if recorded is not None and recorded != data_fingerprint(splits, unlabeled_sets(config)):
        raise DataError(
            f"{run_dir}: the data its config names changed since the run (another fingerprint)"
        )
    sets = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    out: dict[str, Examples] = {}
    for name in names:
        examples = sets.get(name)
        if examples is None:
            raise DataError(f"{run_dir / CONFIG}: the run has no {name} set")
        out[name] = examples
    return out


def inference_precision(
    predictor: Predictor, backend: str, device: str, precision: str
) -> tuple[torch.device, Precision]:
    """Where and in what precision the model computes. A PyTorch model: ``device`` ``auto`` is
    the GPU if there is one, and ``precision`` ``auto`` is training's rule (bf16 where the
    hardware computes it natively, not for a CNN on a CPU). An ONNX model computes in the types
    it was exported or quantized with, on the CPU unless ``cuda`` is asked for."""
    from graft.runtime import resolve_precision, select_device

    if backend == "onnxruntime":
        if precision == "bf16":
            raise UsageError(
                "--precision bf16: an ONNX model computes in the types it was exported with",
                hint="use --precision auto or fp32, or serve the PyTorch model",
            )
        return torch.device("cpu" if device == "auto" else device), "fp32"
    chosen = select_device(device, "--device")
    cnn = bool(getattr(getattr(predictor, "backbone", None), "is_cnn", False))
    return chosen, resolve_precision(precision, chosen, cnn=cnn)
