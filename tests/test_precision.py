"""``train.precision``: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere;
a bf16 run trains, records its precision, keeps fp32 weights and resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_image_run_config, write_yaml
from safetensors.torch import load_file

import graft.recorder
from graft.cli import main
from graft.errors import UsageError
from graft.runtime import autocast, fast_bf16, resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, "fp32"), (True, False, "bf16"), (False, True, "bf16")],
)
def test_auto_precision_follows_the_cpu(
    monkeypatch: pytest.MonkeyPatch, avx512_bf16: bool, amx: bool, expected: str
) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert fast_bf16(CPU) is (expected == "bf16")
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    # A CNN on a CPU trains in fp32 under auto, also with AMX (measured slower in bf16); asked
    # for, bf16 it is.
    assert resolve_precision("auto", CPU, cnn=True) == "fp32"
    assert resolve_precision("bf16", CPU, cnn=True) == "bf16"


def test_this_machine_and_the_autocast_context() -> None:
    flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    x = torch.randn(4, 4)
    with autocast(CPU, "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (x @ x).dtype == torch.float32
    with pytest.raises(UsageError, match=r"train\.precision"):
        resolve_precision("fp8", CPU)


def _config(tmp_path: Path, name: str) -> Path:
    config = tiny_image_run_config(
        {"dataset": "digits"},
        tmp_path / "runs",
        data={"train_size": 64, "val_size": 32, "test_size": 32},
        train={"epochs": 2, "precision": "bf16"},
        output={"name": name},
    )
    return write_yaml(tmp_path / f"{name}.yaml", config)


def test_a_bf16_run_resumes_bit_identically_and_keeps_fp32_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["fit", str(_config(tmp_path, "whole")), "--quiet"]) == 0
    real = graft.recorder.Recorder.epoch_end

    def stop_after_the_first_epoch(self: Any, state: Any, *args: Any) -> None:
        real(self, state, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(graft.recorder.Recorder, "epoch_end", stop_after_the_first_epoch)
    path = _config(tmp_path, "cut")
    assert main(["fit", str(path), "--quiet"]) == 130
    monkeypatch.setattr(graft.recorder.Recorder, "epoch_end", real)
    assert main(["fit", str(path), "--quiet", "--resume", str(tmp_path / "runs" / "cut")]) == 0
    whole, cut = (
        load_file(str(tmp_path / "runs" / n / "model" / "model.safetensors"))
        for n in ("whole", "cut")
    )
    assert all(torch.equal(whole[k], cut[k]) for k in whole)
    assert all(v.dtype != torch.bfloat16 for v in whole.values())  # master weights stay fp32
    results = json.loads((tmp_path / "runs" / "whole" / "results.json").read_text())
    assert results["precision"] == "bf16"


def test_malloc_keeps_freed_memory_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Linux with glibc (this machine and CI) the tuning is accepted; GRAFT_MALLOC_TUNING=0
    leaves malloc alone."""
    import platform

    from graft.runtime import keep_freed_memory

    try:
        monkeypatch.setenv("GRAFT_MALLOC_TUNING", "0")
        keep_freed_memory.cache_clear()
        assert keep_freed_memory() is False
        monkeypatch.delenv("GRAFT_MALLOC_TUNING")
        keep_freed_memory.cache_clear()
        assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
    finally:
        keep_freed_memory.cache_clear()
