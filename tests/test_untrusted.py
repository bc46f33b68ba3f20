"""Files from strangers: weights are read only through safetensors or
``torch.load(weights_only=True)``, so a malicious pickle never runs; NaN/Inf weights are refused
naming the tensor; truncated or corrupt safetensors are a DataError naming the file; and Hugging
Face code shipped with a model runs only when ``trust_remote_code`` is explicitly on.

The malicious pickles are made here, in tmp_path: unpickling one would create a marker file, and
``test_the_payload_is_live`` proves it does when loaded the unsafe way, so every "the marker does
not exist" below is a real check.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_BACKBONES, build_tiny, tiny_image_run_config, write_yaml
from safetensors.torch import load_file, save_file

import graft
from graft.artifact import WEIGHTS, load_model, save_model
from graft.checkpoint import CHECKPOINT, load_checkpoint
from graft.cli import main
from graft.config import BackboneConfig, validate
from graft.data.types import LabelMap
from graft.errors import DataError

BAD_IMAGES = Path(__file__).parent / "fixtures" / "bad" / "good" / "images"


class _Payload:
    """Unpickling this object calls ``pathlib.Path.touch(marker)``: code run by loading."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def malicious_pickle(path: Path, marker: Path) -> Path:
    """A torch file that looks like a checkpoint (a state dict among it) with the payload inside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": {"w": torch.zeros(2)}, "state": {}, "config_hash": "x", "x": _Payload(marker)},
        path,
    )
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture
def no_forced_weights_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees torch's own behaviour, not the switch ``graft.cli.main`` sets."""
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)


@pytest.fixture
def image_model(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    save_model(
        folder, build_tiny(TINY_BACKBONES["timm"][0], None), LabelMap(("a", "b", "c")), plan={}
    )
    return folder


# --------------------------------------------------------------------------- malicious pickles


@pytest.mark.usefixtures("no_forced_weights_only")
def test_the_payload_is_live(tmp_path: Path, marker: Path) -> None:
    """The control: loaded the unsafe way, the file does create the marker."""
    path = malicious_pickle(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.usefixtures("no_forced_weights_only")
def test_checkpoint_refuses_a_malicious_pickle(tmp_path: Path, marker: Path) -> None:
    malicious_pickle(tmp_path / "run" / CHECKPOINT, marker)
    with pytest.raises(DataError, match="refused") as info:
        load_checkpoint(tmp_path / "run")
    assert str(tmp_path / "run" / CHECKPOINT) in info.value.message
    assert "weights_only=False" not in str(info.value)  # torch's unsafe advice is not passed on
    assert not marker.exists()


@pytest.mark.usefixtures("no_forced_weights_only")
def test_resume_from_a_malicious_checkpoint(
    tmp_path: Path,
    marker: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`graft fit --resume RUN` with a planted checkpoint: exit 3, nothing run, nothing written."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "planted"
    malicious_pickle(run_dir / CHECKPOINT, marker)
    config = write_yaml(
        tmp_path / "run.yaml", tiny_image_run_config({"path": str(BAD_IMAGES)}, tmp_path / "runs")
    )
    code = main(["fit", str(config), "--resume", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 3, err
    assert str(run_dir / CHECKPOINT) in err and "refused" in err and "Traceback" not in err
    assert not marker.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [CHECKPOINT]


@pytest.mark.usefixtures("no_forced_weights_only")
def test_model_folder_with_a_pickle_for_weights(image_model: Path, marker: Path) -> None:
    """A pickle renamed model.safetensors is not a safetensors file: refused, never unpickled."""
    malicious_pickle(image_model / WEIGHTS, marker)
    with pytest.raises(DataError, match="unreadable weights") as info:
        load_model(image_model)
    assert str(image_model / WEIGHTS) in info.value.message
    assert not marker.exists()


@pytest.mark.usefixtures("no_forced_weights_only")
def test_offline_timm_weights_refuse_a_malicious_pickle(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged EfficientNet-Lite0 weights are read with weights_only=True: a tampered file
    is refused (pretrained=True is what reads them; building is cheap without them)."""
    import graft.assets
    from graft.models import build_backbone

    evil = malicious_pickle(tmp_path / "efficientnet-lite0.pth", marker)
    monkeypatch.setattr(graft.assets, "efficientnet_lite0_weights", lambda: evil)
    with pytest.raises(DataError, match="refused") as info:
        build_backbone("tf_efficientnet_lite0", num_classes=2, source="timm", pretrained=True)
    assert str(evil) in info.value.message
    assert not marker.exists()


@pytest.mark.usefixtures("no_forced_weights_only")
def test_hf_folder_with_a_malicious_pytorch_bin(
    tmp_path: Path, marker: Path, tiny_bert_dir: Path
) -> None:
    """transformers reads a local pytorch_model.bin with weights_only=True; graft reports the
    refusal as a DataError (not a traceback)."""
    from graft.models.hf_backbone import build_hf

    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_bert_dir / "config.json").read_text())
    malicious_pickle(folder / "pytorch_model.bin", marker)
    with pytest.raises(DataError, match="refused") as info:
        build_hf(str(folder), num_classes=2, pretrained=True)
    assert str(folder) in info.value.message and "weights_only=False" not in str(info.value)
    assert not marker.exists()


def _unsafe_library_load(monkeypatch: pytest.MonkeyPatch, evil: Path) -> None:
    """A library inside the run (as torchvision's hub weights do) loads with weights_only=False
    while the backbone is built."""
    import graft.prepare

    real = graft.prepare.build_backbone

    def build(*args: Any, **kwargs: Any) -> Any:
        torch.load(evil, weights_only=False)
        return real(*args, **kwargs)

    monkeypatch.setattr(graft.prepare, "build_backbone", build)


@pytest.mark.usefixtures("no_forced_weights_only")
@pytest.mark.parametrize("via", ["python", "cli"])
def test_every_torch_load_of_a_run_is_weights_only_and_the_environment_is_restored(
    tmp_path: Path,
    marker: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    via: str,
) -> None:
    """``graft.fit`` from Python and the ``graft`` command alike: a library's unsafe load inside
    the run is refused (the payload does not run), and the caller's environment is as it was."""
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    before = dict(os.environ)
    _unsafe_library_load(monkeypatch, malicious_pickle(tmp_path / "evil.pt", marker))
    config = tiny_image_run_config({"dataset": "digits"}, tmp_path / "runs")
    if via == "python":
        with pytest.raises(pickle.UnpicklingError, match=r"[Ww]eights only load failed"):
            graft.fit(validate(config), quiet=True)
    else:
        assert main(["fit", str(write_yaml(tmp_path / "c.yaml", config))]) == 3
        err = capsys.readouterr().err
        assert "error: refused to load a file that holds Python objects" in err
        assert "Traceback" not in err and "weights_only" not in err
    assert not marker.exists()
    # The switch is off again (the command's OMP/tokenizer defaults are the process's own).
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert {k: v for k, v in os.environ.items() if "TORCH" in k} == {
        k: v for k, v in before.items() if "TORCH" in k
    }
    torch.load(tmp_path / "evil.pt", weights_only=False)  # outside graft: the caller's choice
    assert marker.exists()


def test_an_explicit_opt_out_is_respected(
    tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    from graft.safe_load import weights_only_loading

    with weights_only_loading():
        assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
        torch.load(malicious_pickle(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- NaN / Inf weights


def test_nan_in_saved_weights_is_refused_naming_the_tensor(image_model: Path) -> None:
    state = load_file(str(image_model / WEIGHTS))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(image_model / WEIGHTS))
    with pytest.raises(DataError, match="NaN or Inf") as info:
        load_model(image_model)
    assert name in info.value.message and str(image_model / WEIGHTS) in info.value.message


def test_predict_with_nan_weights_exits_3(
    image_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_file(str(image_model / WEIGHTS))
    state["head.fc.weight"] = torch.full_like(state["head.fc.weight"], float("inf"))
    save_file(state, str(image_model / WEIGHTS))
    image = str(BAD_IMAGES / "cat" / "0.png")
    code = main(["predict", str(image_model), image])
    captured = capsys.readouterr()
    assert code == 3 and captured.out == ""
    assert "head.fc.weight" in captured.err and "Traceback" not in captured.err


def test_checkpoint_with_inf_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    weights = {"body.w": torch.zeros(3), "head.fc.bias": torch.tensor([0.0, float("-inf")])}
    torch.save({"model": weights, "state": {}, "config_hash": "x"}, tmp_path / CHECKPOINT)
    with pytest.raises(DataError, match="NaN or Inf") as info:
        load_checkpoint(tmp_path)
    assert "head.fc.bias" in info.value.message and "body.w" not in info.value.message


def test_foreign_torch_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    """A plain state dict loads under weights_only, but is no checkpoint: said so, not KeyError."""
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / CHECKPOINT)
    with pytest.raises(DataError, match="not a graft checkpoint"):
        load_checkpoint(tmp_path)


# --------------------------------------------------------------------------- damaged safetensors


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _huge_header_length(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])


def _garbage_header(path: Path) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"{" * n + data[8 + n :])


def _shapes_beyond_the_data(path: Path) -> None:
    """A well-formed header whose offsets point past the end of the file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**6
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.mark.parametrize(
    "damage", [_truncate, _huge_header_length, _garbage_header, _shapes_beyond_the_data]
)
def test_damaged_safetensors_is_a_data_error_naming_it(image_model: Path, damage: Any) -> None:
    damage(image_model / WEIGHTS)
    with pytest.raises(DataError, match="unreadable weights") as info:
        load_model(image_model)
    assert str(image_model / WEIGHTS) in info.value.message


# --------------------------------------------------------------------------- trust_remote_code


def test_trust_remote_code_is_off_by_default() -> None:
    assert BackboneConfig(name="minilm").trust_remote_code is False


def _spy_on_loaders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Record the trust_remote_code each transformers loader is called with (then call it)."""
    import transformers

    calls: list[tuple[str, Any]] = []
    for cls_name, method in [
        ("AutoModel", "from_pretrained"),
        ("AutoModel", "from_config"),
        ("AutoConfig", "from_pretrained"),
        ("AutoTokenizer", "from_pretrained"),
    ]:
        cls = getattr(transformers, cls_name)
        real = getattr(cls, method)

        def spy(
            *args: Any, _real: Any = real, _name: str = f"{cls_name}.{method}", **kw: Any
        ) -> Any:
            calls.append((_name, kw.get("trust_remote_code", "not passed")))
            return _real(*args, **kw)

        monkeypatch.setattr(cls, method, spy)
    return calls


@pytest.mark.parametrize("pretrained", [True, False])
def test_hf_loaders_get_trust_remote_code_false(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch, pretrained: bool
) -> None:
    from graft.models.hf_backbone import build_hf

    calls = _spy_on_loaders(monkeypatch)
    build_hf(str(tiny_bert_dir), num_classes=2, pretrained=pretrained)
    assert len(calls) >= 2 and all(value is False for _, value in calls), calls


def test_hf_loaders_get_trust_remote_code_true_only_when_asked(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graft.models.hf_backbone import build_hf

    calls = _spy_on_loaders(monkeypatch)
    build_hf(str(tiny_bert_dir), num_classes=2, pretrained=False, trust_remote_code=True)
    assert calls and all(value is True for _, value in calls), calls


def test_saved_text_model_loads_with_trust_remote_code_false(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model folder (its JSON is data from elsewhere) cannot turn remote code on."""
    folder = tmp_path / "model"
    save_model(
        folder, build_tiny(TINY_BACKBONES["hf"][0], tiny_bert_dir, 2), LabelMap(("n", "p")), plan={}
    )
    meta = json.loads((folder / "graft_model.json").read_text())
    meta["backbone"]["trust_remote_code"] = True  # a hand-edited description tries
    (folder / "graft_model.json").write_text(json.dumps(meta))
    calls = _spy_on_loaders(monkeypatch)
    with pytest.raises(DataError, match="malformed model description"):
        load_model(folder)
    del meta["backbone"]["trust_remote_code"]
    (folder / "graft_model.json").write_text(json.dumps(meta))
    load_model(folder)
    assert calls and all(value is False for _, value in calls), calls


def test_model_with_its_own_code_is_refused_and_not_run(tmp_path: Path, marker: Path) -> None:
    """A local folder whose config maps AutoModel to its own Python file: without
    trust_remote_code the file is never imported (it would create the marker)."""
    from graft.models.hf_backbone import build_hf

    folder = tmp_path / "custom-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps(
            {
                "model_type": "graft-evil",
                "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"},
            }
        )
    )
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    for pretrained in (True, False):
        with pytest.raises(DataError, match="trust_remote_code") as info:
            build_hf(str(folder), num_classes=2, pretrained=pretrained)
        assert str(folder) in info.value.message
    assert not marker.exists()


@pytest.mark.parametrize("enabled", [False, True])
def test_the_config_option_reaches_the_hf_loaders(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """``backbone.trust_remote_code`` in a run config is what every transformers loader gets."""
    from graft.config import validate
    from graft.console import RunLog
    from graft.prepare import prepare

    table = tmp_path / "texts.csv"
    rows = [
        f"{'good' if i % 2 else 'bad'} film number {i},{'pos' if i % 2 else 'neg'}"
        for i in range(40)
    ]
    table.write_text("text,label\n" + "\n".join(rows) + "\n")
    config = validate(
        {
            "backbone": {
                "name": f"hf:{tiny_bert_dir}",
                "pretrained": False,
                "trust_remote_code": enabled,
            },
            "data": {"train": {"path": str(table)}},
            "train": {"epochs": 1},
            "hardware": {"threads": 1},
            "output": {"dir": str(tmp_path / "out"), "progress": False},
        }
    )
    calls = _spy_on_loaders(monkeypatch)
    prepare(config, RunLog(quiet=True))
    assert calls and all(value is enabled for _, value in calls), calls
    assert not (tmp_path / "out").exists()
