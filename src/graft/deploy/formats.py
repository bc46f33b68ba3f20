"""``graft export --format hf|timm|torchscript``: a graft model in the format another library
loads, each checked against eager PyTorch by running the exported artifact exactly as its users
would load it (reloaded from the folder) at batch 1, 7 and 32 (:mod:`graft.deploy.parity`).

- ``hf`` (text models): a Hugging Face folder for ``AutoModelForSequenceClassification`` and
  ``transformers.pipeline("text-classification")``. graft's text model (encoder, mean or [CLS]
  pooling without BERT's dense + tanh pooler, one linear layer) is no standard transformers
  class, so the folder carries its few lines of model code (``modeling_graft.py``, named by
  ``auto_map`` in ``config.json``, as custom models on the hub do) and loading it needs
  ``trust_remote_code=True``. A standard class would load the weights without a word and
  predict something else.
- ``timm`` (timm models): ``model.safetensors`` in timm's own key layout (the graft head becomes
  the timm classifier) and timm's hub ``config.json``, written by timm's own ``save_for_hf``;
  ``timm.create_model("local-dir:FOLDER", pretrained=True)`` rebuilds it.
- ``torchscript``: ``model.pt`` (``torch.jit.trace``), and beside it ``model.pt2``, the same
  model as a ``torch.export`` program. TorchScript is deprecated in torch 2.14 (``torch.jit``
  trace, script, save and load each raise a ``FutureWarning`` that points to ``torch.export``);
  ``model.pt2`` is its successor, written when ``torch.export`` handles the model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.artifact import LoadedModel
from graft.atomic import atomic_write_text
from graft.deploy.output import copy_companions, write_meta
from graft.deploy.parity import Inputs, check_parity, parity_examples, torch_logits
from graft.errors import DataError, UsageError
from graft.models.base import ImagePreprocess, TextPreprocess

FORMAT_HF = "hf"
FORMAT_TIMM = "timm"
FORMAT_TORCHSCRIPT = "torchscript"
HF_MODELING_FILE = "modeling_graft.py"  # the custom model code inside an hf folder
TORCHSCRIPT_FILE = "model.pt"
EXPORTED_PROGRAM_FILE = "model.pt2"
README = "README.md"
DIR = "DIR"  # stands for the exported folder in `load_with` (the CLI renames its folder)
TORCHSCRIPT_NOTE = (
    "TorchScript is deprecated in torch 2.14 (torch.jit.trace/save/load warn FutureWarning); "
    "torch.export is its successor: model.pt2 holds the same model as an ExportedProgram"
)


# --------------------------------------------------------------------------- shared pieces


def _net(model: LoadedModel) -> nn.Module:
    """graft's PyTorch model, fp32 on the CPU in eval mode (dropout off): the parity reference."""
    return model.backbone.model.to("cpu").float().eval()


def _input_names(model: LoadedModel) -> list[str]:
    return ["pixel_values"] if model.modality == "image" else ["input_ids", "attention_mask"]


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _write_readme(folder: Path, title: str, load_with: str, notes: str = "") -> None:
    intro = f"Written by `graft export`. Load it with ({DIR}: this folder):"
    text = f"# {title}\n\n{intro}\n\n```python\n{load_with}\n```\n"
    atomic_write_text(folder / README, text + (f"\n{notes}\n" if notes else ""))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _example_batch(model: LoadedModel, n: int = 4) -> Inputs:
    """A batch of ``n`` real examples (more than one, so tracing does not take the batch axis
    for a constant 1; texts of different lengths, so the padded path is traced)."""
    examples = parity_examples(model, n)
    _, inputs = next(model.batches(examples, n))
    return inputs


# --------------------------------------------------------------------------- hf


def hf_state_dict(model: LoadedModel) -> dict[str, torch.Tensor]:
    """graft's text model weights under the names of :mod:`graft.deploy.formats_hf_modeling`:
    ``body.encoder.*`` → ``encoder.*``, ``head.fc.*`` → ``classifier.*``."""
    state: dict[str, torch.Tensor] = {}
    for key, value in model.backbone.model.state_dict().items():
        if key.startswith("body.encoder."):
            state["encoder." + key[len("body.encoder.") :]] = value
        elif key.startswith("head.fc."):
            state["classifier." + key[len("head.fc.") :]] = value
        else:
            raise DataError(f"hf export: unexpected weight {key!r} in the graft text model")
    return state


def _require_hf(model: LoadedModel) -> None:
    source = model.backbone.spec.get("source")
    if model.modality != "text" or source != "hf":
        raise UsageError(
            f"--format hf is for text models (Hugging Face encoders); this is a {source} "
            f"{model.modality} model",
            hint="export it with --format timm (timm models) or --format onnx",
        )


def export_hf(model: LoadedModel, folder: Path) -> dict[str, Any]:
    """Write a graft text model into ``folder`` as a Hugging Face folder: ``config.json``
    (``id2label`` / ``label2id`` from the label map, ``auto_map`` naming the model code),
    ``model.safetensors`` (``save_pretrained``), ``modeling_graft.py``, the tokenizer
    (``save_pretrained``, its ``model_max_length`` set to graft's ``max_length`` so that
    ``truncation=True`` cuts texts where graft does) and a README. Loading it needs
    ``trust_remote_code=True`` (see the module docstring for why). Parity: the folder reloaded
    through ``AutoModelForSequenceClassification``, against eager PyTorch. A non-text model is a
    :class:`UsageError`; a parity failure a :class:`DataError`."""
    from graft.deploy import formats_hf_modeling as modeling

    _require_hf(model)
    spec = model.backbone.spec
    net = _net(model)
    names = list(model.label_map.names)
    body: Any = net.body
    encoder = body.encoder
    config = modeling.GraftTextConfig(
        encoder=encoder.config.to_dict(),
        pooling=spec.get("pooling", "mean"),
        head_dropout=float(spec.get("head_dropout", 0.0)),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
        # softmax in the pipeline (not the sigmoid of multi-label), as graft's probabilities
        problem_type="single_label_classification",
        architectures=[modeling.GraftForSequenceClassification.__name__],
    )
    module = Path(HF_MODELING_FILE).stem
    config.auto_map = {
        "AutoConfig": f"{module}.{modeling.GraftTextConfig.__name__}",
        "AutoModelForSequenceClassification": (
            f"{module}.{modeling.GraftForSequenceClassification.__name__}"
        ),
    }
    hf_model = modeling.GraftForSequenceClassification(config)
    hf_model.load_state_dict(hf_state_dict(model), strict=True)
    hf_model.eval()
    with _quiet_transformers():
        hf_model.save_pretrained(str(folder))
    shutil.copyfile(modeling.__file__, folder / HF_MODELING_FILE)
    model.tokenizer.save_pretrained(str(folder))
    prep = model.preprocess
    assert isinstance(prep, TextPreprocess)
    tokenizer_config = folder / "tokenizer_config.json"
    settings = json.loads(tokenizer_config.read_text(encoding="utf-8"))
    settings["model_max_length"] = prep.max_length  # graft truncates there
    atomic_write_text(tokenizer_config, json.dumps(settings, indent=2, ensure_ascii=False))

    load_with = (
        "from transformers import pipeline\n"
        f'classify = pipeline("text-classification", model="{DIR}", '
        "trust_remote_code=True)\n"
        'classify(["a text"], truncation=True, top_k=None)'
    )
    _write_readme(
        folder,
        "A graft text classifier for Hugging Face transformers",
        load_with,
        "`trust_remote_code=True` runs `modeling_graft.py` from this folder (read it: about 100 "
        "lines of torch): graft's model pools the encoder's hidden states (mean over the attention "
        f"mask, or [CLS]; this one: {config.pooling}) without BERT's pooler, which no standard "
        "transformers class does. `truncation=True` cuts texts at the "
        f"{prep.max_length} tokens graft read.",
    )

    with _quiet_transformers():
        reloaded = _load_hf(folder)

    def candidate(inputs: Inputs) -> np.ndarray:
        with torch.no_grad():
            return reloaded(**inputs).logits.float().numpy()

    parity = check_parity(
        model, torch_logits(net), candidate, what="Hugging Face export", folder=folder
    )
    return {
        "format": FORMAT_HF,
        "files": _files(folder),
        "parity": parity.to_dict(),
        "load_with": load_with,
        "trust_remote_code": True,
        "pooling": config.pooling,
    }


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or info lines from transformers while graft writes and reloads (graft
    reports what was written, and the parity figures)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _load_hf(folder: Path) -> Any:
    """The folder loaded as a user would, through the auto class and its ``auto_map``."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(
            str(folder), trust_remote_code=True
        ).eval()
    except (OSError, ValueError) as e:
        raise DataError(
            f"Hugging Face export ({folder}): does not load back: {_first_line(e)}"
        ) from None


# --------------------------------------------------------------------------- timm


def _require_timm(model: LoadedModel) -> None:
    source = model.backbone.spec.get("source")
    if source != "timm":
        raise UsageError(
            f"--format timm is for models of the timm family; this one is of the {source} family",
            hint="export it with --format onnx"
            + (" or --format hf" if source == "hf" else " or --format torchscript"),
        )


def timm_network(model: LoadedModel) -> nn.Module:
    """A copy of the graft model as one timm network: the body's timm net (built with
    ``num_classes=0``) given a classifier of the model's classes, holding the graft head's
    weights. (graft's head is dropout, then a linear layer: timm's classifier is that linear
    layer after its own ``drop_rate`` dropout, and both are identities in eval mode.)"""
    graft_model: Any = model.backbone.model
    net = copy.deepcopy(graft_model.body.net).cpu().float().eval()
    net.reset_classifier(len(model.label_map))
    classifier = net.get_classifier()
    fc = graft_model.head.fc
    if not isinstance(classifier, nn.Linear) or classifier.weight.shape != fc.weight.shape:
        raise DataError(
            f"timm export: the classifier of {model.backbone.spec.get('name')} is "
            f"{type(classifier).__name__}, not a linear layer like graft's head",
            hint="use --format onnx",
        )
    classifier.load_state_dict(fc.state_dict())
    return net.eval()


def export_timm(model: LoadedModel, folder: Path) -> dict[str, Any]:
    """Write a graft timm model into ``folder`` as timm saves for the hub (timm's own
    ``save_for_hf``): ``model.safetensors`` in timm's key layout (the net's keys and its
    classifier's, e.g. ``classifier.weight``), ``config.json`` (``architecture``,
    ``num_classes``, ``label_names``, ``model_args`` such as a ViT's ``img_size``, and a
    ``pretrained_cfg`` with graft's input size, mean, std, bilinear interpolation, crop 1.0),
    and a README. Parity: ``timm.create_model("local-dir:FOLDER", pretrained=True)`` against
    eager PyTorch. A model of another family is a :class:`UsageError`."""
    import timm
    from timm.models import save_for_hf

    _require_timm(model)
    prep = model.preprocess
    assert isinstance(prep, ImagePreprocess)
    spec = model.backbone.spec
    net = timm_network(model)
    data_config = {
        "input_size": (prep.channels, prep.image_size, prep.image_size),
        "mean": tuple(prep.mean),
        "std": tuple(prep.std),
        # graft centre-crops to a square, then resizes (bilinear, antialiased): timm's crop_pct
        # 1.0 (resize the short side, crop the centre) is the same geometry.
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    dropout = float(spec.get("head_dropout", 0.0))
    # graft's head dropout sits where timm's drop_rate does (before the classifier): recorded so
    # that fine-tuning the timm model again uses it (timm omits drop rates otherwise).
    model_args = {"drop_rate": dropout} if dropout > 0 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_for_hf(
            net,
            str(folder),
            model_config={"label_names": list(model.label_map.names)},
            model_args=model_args,
            safe_serialization=True,
            data_config=data_config,
        )
    saved = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    arch, n = saved["architecture"], saved["num_classes"]
    extra = {k: v for k, v in saved.get("model_args", {}).items() if k != "num_classes"}
    extra_text = "".join(f", {k}={v!r}" for k, v in extra.items())
    load_with = (
        "import timm\n"
        f'model = timm.create_model("local-dir:{DIR}", pretrained=True).eval()\n'
        "# or: timm.create_model(\n"
        f'#   "{arch}", pretrained=True, num_classes={n}{extra_text},\n'
        f'#   pretrained_cfg_overlay=dict(file="{DIR}/model.safetensors", '
        f"num_classes={n}))\n"
        "config = timm.data.resolve_data_config({}, model=model)\n"
        "transform = timm.data.create_transform(**config)"
    )
    _write_readme(
        folder,
        f"A graft fine-tuned {arch} for timm",
        load_with,
        "The class names are `model.pretrained_cfg['label_names']`. With "
        "`pretrained_cfg_overlay`, give `num_classes` in the overlay too: timm drops a "
        "classifier whose class count differs from the architecture's default config.",
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()

    def candidate(inputs: Inputs) -> np.ndarray:
        with torch.no_grad():
            return reloaded(inputs["pixel_values"]).float().numpy()

    parity = check_parity(
        model, torch_logits(_net(model)), candidate, what="timm export", folder=folder
    )
    return {
        "format": FORMAT_TIMM,
        "files": _files(folder),
        "parity": parity.to_dict(),
        "load_with": load_with,
        "architecture": arch,
    }


# --------------------------------------------------------------------------- torchscript


class ImageForward(nn.Module):
    """The graft model with a positional ``forward(pixel_values)``: what tracing records."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixel_values)


class TextForward(nn.Module):
    """The graft model with a positional ``forward(input_ids, attention_mask)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=input_ids, attention_mask=attention_mask)


def _positional(model: LoadedModel, net: nn.Module) -> nn.Module:
    return (ImageForward(net) if model.modality == "image" else TextForward(net)).eval()


def _logits_of(run: Callable[..., torch.Tensor], names: list[str]) -> Callable[[Inputs], Any]:
    def candidate(inputs: Inputs) -> np.ndarray:
        with torch.no_grad():
            return run(*(inputs[n] for n in names)).float().numpy()

    return candidate


def _write_exported_program(
    model: LoadedModel, wrapper: nn.Module, inputs: Inputs, folder: Path
) -> dict[str, Any]:
    """``model.pt2``: ``torch.export`` of ``wrapper`` with a dynamic batch (and sequence) axis,
    checked like the TorchScript file; a model ``torch.export`` cannot handle gets none (with
    the reason), the TorchScript file still serves."""
    names = _input_names(model)
    args = tuple(inputs[n] for n in names)
    batch = torch.export.Dim("batch")
    axes: dict[int, Any] = {0: batch}
    prep = model.preprocess
    if isinstance(prep, TextPreprocess):
        # Bounded by graft's max_length (its pipeline never gives more): unbounded, the export
        # fails on the position embeddings' own limit ("Constraints violated (sequence)").
        axes[1] = torch.export.Dim("sequence", max=prep.max_length)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(wrapper, args, dynamic_shapes=tuple(axes for _ in names))
            torch.export.save(program, str(folder / EXPORTED_PROGRAM_FILE))
            loaded = torch.export.load(str(folder / EXPORTED_PROGRAM_FILE)).module()
    except Exception as e:  # torch.export's errors name the construct it cannot trace
        (folder / EXPORTED_PROGRAM_FILE).unlink(missing_ok=True)
        return {"file": None, "skipped": f"torch.export failed: {_first_line(e)}"}
    parity = check_parity(
        model,
        torch_logits(_net(model)),
        _logits_of(loaded, names),
        what="torch.export program (model.pt2)",
        folder=folder,
    )
    return {
        "file": EXPORTED_PROGRAM_FILE,
        "parity": parity.to_dict(),
        "load_with": (
            f'program = torch.export.load("{DIR}/{EXPORTED_PROGRAM_FILE}")\n'
            f"logits = program.module()({', '.join(names)})"
        ),
    }


def export_torchscript(model: LoadedModel, folder: Path) -> dict[str, Any]:
    """Write ``model.pt`` (``torch.jit.trace`` of the graft model in eval mode, fp32, CPU;
    positional inputs ``pixel_values``, or ``input_ids, attention_mask``), ``model.pt2`` (the
    same as a ``torch.export`` program, when it exports), ``graft_model.json`` (labels,
    preprocessing, ``format: torchscript``), the tokenizer of a text model and a README into
    ``folder``. Both files are reloaded and checked against eager PyTorch at batch 1, 7 and 32
    (texts: another padded length per batch), so a shape baked in by tracing fails the export.

    TorchScript is deprecated in torch 2.14 (every ``torch.jit`` call warns that
    ``torch.export`` replaces it): ``model.pt2`` is the file to prefer."""
    net = _net(model)
    wrapper = _positional(model, net)
    inputs = _example_batch(model)
    names = _input_names(model)
    args = tuple(inputs[n] for n in names)
    copy_companions(model, folder)
    path = folder / TORCHSCRIPT_FILE
    with warnings.catch_warnings():
        # torch.jit's FutureWarning (deprecation: in the summary's note) and its TracerWarnings
        # (a Python value taken as a constant): the parity check at other shapes is the judge.
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(wrapper, args, check_trace=False)
        except Exception as e:
            raise DataError(
                f"torch.jit.trace could not trace this model: {_first_line(e)}",
                hint="use --format onnx",
            ) from None
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    parity = check_parity(
        model,
        torch_logits(net),
        _logits_of(loaded, names),
        what="TorchScript export",
        folder=folder,
    )
    program = _write_exported_program(model, wrapper, inputs, folder)
    details = {
        "inputs": names,
        "torch": torch.__version__,
        "note": TORCHSCRIPT_NOTE,
        "exported_program": program.get("file"),
    }
    write_meta(model, folder, format=FORMAT_TORCHSCRIPT, torchscript=details)
    signature = ", ".join(names)
    load_with = (
        "import torch\n"
        f'model = torch.jit.load("{DIR}/{TORCHSCRIPT_FILE}")  # deprecated: prefer model.pt2\n'
        f"logits = model({signature})"
    )
    if program.get("file"):
        load_with += f"\n# successor (torch.export):\n{program['load_with']}"
    prep = model.preprocess
    how_inputs = (
        f"`pixel_values`: float (batch, 3, {prep.image_size}, {prep.image_size}), normalised "
        f"with mean {list(prep.mean)} and std {list(prep.std)}"
        if isinstance(prep, ImagePreprocess)
        else f"`input_ids`, `attention_mask`: int64 (batch, length) from the tokenizer in "
        f"tokenizer/, at most {prep.max_length} tokens"
    )
    _write_readme(
        folder,
        "A graft model as TorchScript (and torch.export)",
        load_with,
        f"Inputs: {how_inputs}. Class names and preprocessing: graft_model.json. "
        "TorchScript is deprecated in torch 2.14; `model.pt2` (torch.export) is its successor.",
    )
    return {
        "format": FORMAT_TORCHSCRIPT,
        "files": _files(folder),
        "parity": parity.to_dict(),
        "load_with": load_with,
        "note": TORCHSCRIPT_NOTE,
        "exported_program": program,
    }
