"""Weight interpolation (WiSE-FT) and model soups: the arithmetic against hand computations, the
ends reproduced exactly, the greedy soup's promise, the files they write, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_BACKBONES, build_tiny, one_batch, random_examples, tiny_image_run_config
from safetensors.torch import load_file

from graft import fit
from graft.artifact import load_model
from graft.cli.app import main
from graft.merging.interpolate import choose, parse_alphas
from graft.merging.weights import average_states, interpolate_states
from graft.rundir import PROBE_HEAD

# --------------------------------------------------------------------------- the arithmetic


def _two_ends(tiny: Any, bert: Path | None) -> tuple[Any, Any]:
    a = build_tiny(tiny, bert)
    torch.manual_seed(1)
    b = build_tiny(tiny, bert)
    with torch.no_grad():  # a different second end, BatchNorm statistics included
        for t in b.model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
            else:
                t.add_(7)  # integer buffers: counts that must come from the fine-tuned end
    return a, b


@pytest.mark.parametrize("tiny", [TINY_BACKBONES["timm"][0], TINY_BACKBONES["hf"][0]], ids=str)
def test_the_ends_reproduce_both_models_logits_exactly(tiny: Any, tiny_bert_dir: Path) -> None:
    base, tuned = _two_ends(tiny, tiny_bert_dir if tiny.family == "hf" else None)
    inputs = one_batch(base)
    base.model.eval()
    tuned.model.eval()
    with torch.no_grad():
        want = {0.0: base.model(**inputs), 1.0: tuned.model(**inputs)}
    probe = build_tiny(tiny, tiny_bert_dir if tiny.family == "hf" else None).model.eval()
    for alpha, logits in want.items():
        probe.load_state_dict(
            interpolate_states(base.model.state_dict(), tuned.model.state_dict(), alpha)
        )
        with torch.no_grad():
            assert torch.equal(probe(**inputs), logits), alpha


def test_half_way_is_the_hand_computed_average_and_integers_come_from_the_tuned_end() -> None:
    base = {"w": torch.tensor([1.0, 2.0, -4.0]), "bn.running_var": torch.tensor([1.0, 3.0])}
    tuned = {"w": torch.tensor([3.0, 0.0, 4.0]), "bn.running_var": torch.tensor([2.0, 5.0])}
    base["bn.num_batches_tracked"] = torch.tensor(10)
    tuned["bn.num_batches_tracked"] = torch.tensor(99)
    half = interpolate_states(base, tuned, 0.5)
    assert half["w"].tolist() == [2.0, 1.0, 0.0]
    assert half["bn.running_var"].tolist() == [1.5, 4.0]  # running statistics are mixed too
    assert int(half["bn.num_batches_tracked"]) == 99
    quarter = interpolate_states(base, tuned, 0.25)
    assert quarter["w"].tolist() == [1.5, 1.5, -2.0]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate_states(base, tuned, 1.5)


def test_average_of_three_states_is_the_hand_mean() -> None:
    states = [
        {"w": torch.tensor([0.0, 3.0]), "n": torch.tensor(1)},
        {"w": torch.tensor([3.0, 3.0]), "n": torch.tensor(2)},
        {"w": torch.tensor([6.0, -3.0]), "n": torch.tensor(3)},
    ]
    mean = average_states(states)
    assert mean["w"].tolist() == [3.0, 1.0]
    assert mean["w"].dtype == torch.float32
    assert int(mean["n"]) == 1  # the first (best) ingredient's


def test_alpha_ranges_are_parsed_with_both_ends() -> None:
    assert parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("0.3,0.6") == [0.0, 0.3, 0.6, 1.0]
    assert parse_alphas("0:1:0.4") == [0.0, 0.4, 0.8, 1.0]
    points = [
        {"alpha": a, "sets": {"validation": {"accuracy": acc}}}
        for a, acc in [(0.0, 0.5), (0.5, 0.8), (1.0, 0.8)]
    ]
    assert choose(points, "validation")["alpha"] == 1.0  # a tie goes to the tuned side


# --------------------------------------------------------------------------- real runs


def _text_csv(path: Path, n: int, seed: int) -> Path:
    ex = random_examples("text", n, ["neg", "pos"], seed=seed)
    lines = ["text,label"] + [f"{t},{y}" for t, y in zip(ex.inputs, ex.labels, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _text_config(tmp: Path, bert: Path, name: str, **sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "backbone": {"name": str(bert), "source": "hf"},
        "data": {
            "train": {"path": str(_text_csv(tmp / "train.csv", 80, 0))},
            "extra_eval": {"shifted": {"path": str(_text_csv(tmp / "shifted.csv", 30, 1))}},
            "max_length": 16,
        },
        "strategy": {"name": "full"},
        "optim": {"lr": 5e-3},
        # fp32: the hand measurements below run in fp32 (auto may pick bf16 on this CPU).
        "train": {"epochs": 2, "batch_size": 8, "precision": "fp32"},
        "hardware": {"threads": 1},
        "output": {"dir": str(tmp / "runs"), "name": name, "progress": False},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> dict[str, Path]:
    """A full fine-tune whose head started as the pretrained body's probe, a linear probe, and
    an LP-FT run, of the tiny BERT on the same CSV data."""
    tmp = tmp_path_factory.mktemp("merge-text")
    out = {}
    out["ft"] = fit(
        _text_config(tmp, tiny_bert_dir, "ft", init={"head": "linear_probe"}), quiet=True
    ).run_dir
    out["lp"] = fit(
        _text_config(tmp, tiny_bert_dir, "lp", strategy={"name": "linear_probe"}), quiet=True
    ).run_dir
    out["lpft"] = fit(
        _text_config(
            tmp,
            tiny_bert_dir,
            "lpft",
            strategy={"name": "lp_ft"},
            train={"restore_best": False},  # the saved head is the fine-tuned one
        ),
        quiet=True,
    ).run_dir
    out["tmp"] = tmp
    return out


def _results(path: Path) -> dict[str, Any]:
    return json.loads((path / "results.json").read_text())


def test_interpolate_with_the_pretrained_base_writes_a_model_with_its_curve(
    text_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = text_runs["tmp"] / "wise"
    code = main(
        [
            "interpolate",
            str(text_runs["ft"]),
            "--alphas",
            "0,0.5,1",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    assert "warning" not in capsys.readouterr().out  # it started at this very base
    results = _results(out)
    curve = results["interpolation"]["curve"]
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0]
    ft = _results(text_runs["ft"])
    # α = 1 is the fine-tuned model: the fine-tuned run's own measurement, set for set.
    for name in ("validation", "test"):
        assert curve[-1][name]["accuracy"] == pytest.approx(ft[name]["accuracy"])
        assert curve[-1][name]["loss"] == pytest.approx(ft[name]["loss"], rel=1e-5)
    assert curve[-1]["shifted"]["accuracy"] == pytest.approx(ft["extra"]["shifted"]["accuracy"])
    # α = 0 is the linear probe of the pretrained body: the linear-probe run's test set, the
    # same examples, measured by an independent fit; the probe head trains to a similar place.
    lp = _results(text_runs["lp"])
    assert abs(curve[0]["test"]["accuracy"] - lp["test"]["accuracy"]) <= 0.5
    # The chosen α is the best on validation, and the model written is that α's.
    chosen = results["interpolation"]["alpha"]
    best = max(p["validation"]["accuracy"] for p in curve)
    assert next(p for p in curve if p["alpha"] == chosen)["validation"]["accuracy"] == best
    loaded = load_model(out)
    meta = json.loads((out / "model" / "graft_model.json").read_text())
    assert meta["interpolation"]["alpha"] == chosen
    assert results["strategy"] == "wise_ft"
    assert (out / "report.html").read_text().count("<img") >= 1
    # `graft eval` / the Python API read it like any model: its weights are θ(chosen).
    tuned = load_file(str(text_runs["ft"] / "model" / "model.safetensors"))
    written = load_file(str(out / "model" / "model.safetensors"))
    assert written.keys() == tuned.keys()
    if chosen == 1.0:
        assert all(torch.equal(written[k], tuned[k]) for k in tuned)
    assert loaded.label_map.names == ("neg", "pos")


def test_a_run_that_did_not_start_at_the_base_is_interpolated_with_a_warning(
    text_runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The linear-probe run's head started at random, not at the L-BFGS probe of --base pretrained.
    out = tmp_path / "wise"
    assert main(["interpolate", str(text_runs["lp"]), "--alphas", "0,1", "-o", str(out)]) == 0
    assert "warning: the fine-tuned run did not start at this base" in capsys.readouterr().out


def test_graft_report_shows_an_interpolated_model_as_its_own_row(
    text_runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "wise"
    assert main(["interpolate", str(text_runs["ft"]), "--alphas", "0,1", "-o", str(out)]) == 0
    report = tmp_path / "report.html"
    assert main(["report", str(text_runs["ft"]), str(out), "-o", str(report)]) == 0
    text = report.read_text()
    assert "wise_ft" in text and "full" in text


def test_lp_ft_saves_its_probe_head_and_serves_as_the_base(
    text_runs: dict[str, Path], tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from graft.artifact import LoadedModel
    from graft.config import load_config
    from graft.models import build_backbone
    from graft.prepare import load_splits

    run = text_runs["lpft"]
    head = load_file(str(run / PROBE_HEAD))
    final = load_file(str(run / "model" / "model.safetensors"))
    assert set(head) == {"fc.weight", "fc.bias"}
    assert not torch.equal(head["fc.weight"], final["head.fc.weight"])  # FT moved the head on
    out = tmp_path / "wise"
    args = ["interpolate", str(run), "--base", str(run), "--alphas", "0,1", "-o", str(out)]
    assert main(args) == 0
    curve = _results(out)["interpolation"]["curve"]
    # α = 0 by hand: the pretrained tiny BERT with the probe head, on the run's test examples.
    backbone = build_backbone(str(tiny_bert_dir), num_classes=2, source="hf", max_length=16)
    backbone.model.head.load_state_dict(head)
    loaded = load_model(run)
    by_hand = LoadedModel(backbone, loaded.label_map, {}, run)
    splits = load_splits(load_config(run / "config.yaml").data)
    assert splits.test is not None
    expected = by_hand.evaluate(splits.test)
    assert curve[0]["test"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert curve[0]["test"]["loss"] == pytest.approx(expected["loss"], rel=1e-4)


# --------------------------------------------------------------------------- soups


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three seeds of a tiny CNN (BatchNorm) fine-tuned on the same in-memory-free image CSV-less
    data: an IDX-free image folder written here."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("merge-images")
    ex = random_examples("image", 60, ["a", "b", "c"], seed=3)
    for i, (img, label) in enumerate(zip(ex.inputs, ex.labels, strict=True)):
        (tmp / "data" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img)).save(tmp / "data" / label / f"{i}.png")
    runs = []
    for seed in range(3):
        config = tiny_image_run_config(
            {"path": str(tmp / "data")},
            tmp / "runs",
            train={"epochs": 2, "seed": seed},
            optim={"lr": 3e-3},
            output={"name": f"seed{seed}", "progress": False},
        )
        runs.append(fit(config, quiet=True).run_dir)
    return runs


def _validation_accuracy(run_or_model: Path, reference_run: Path) -> float:
    """A model's validation accuracy measured here: the reference run's validation examples."""
    from graft.config import load_config
    from graft.prepare import load_splits

    splits = load_splits(load_config(reference_run / "config.yaml").data)
    return float(load_model(run_or_model).evaluate(splits.validation)["accuracy"])


def test_a_greedy_soup_is_never_worse_on_validation_than_its_best_ingredient(
    image_runs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "greedy"
    assert main(["soup", *map(str, image_runs), "--greedy", "-o", str(out)]) == 0
    best = max(_validation_accuracy(r, image_runs[0]) for r in image_runs)
    assert _validation_accuracy(out, image_runs[0]) >= best
    info = _results(out)["soup"]
    assert info["ingredients"][0]["kept"] is True
    assert _results(out)["strategy"] == "greedy_soup"


def test_a_uniform_soup_is_the_mean_of_its_ingredients(
    image_runs: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "uniform"
    assert main(["soup", *map(str, image_runs), "--uniform", "-o", str(out)]) == 0
    states = [load_file(str(r / "model" / "model.safetensors")) for r in image_runs]
    soup = load_file(str(out / "model" / "model.safetensors"))
    for key, value in soup.items():
        if value.is_floating_point():
            mean = sum(s[key].double() for s in states) / 3
            torch.testing.assert_close(value.double(), mean, rtol=1e-6, atol=1e-7)
    assert _results(out)["soup"]["kept"] == 3


# --------------------------------------------------------------------------- refusals


def _refused(args: list[str], code: int, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == code
    err = capsys.readouterr().err
    assert text in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("alphas", "text"),
    [
        ("0:1.5:0.5", "outside [0, 1]"),
        ("a:b:c", "--alphas"),
        ("1:0:0.1", "start <= stop"),
        ("0.5,-0.1", "outside [0, 1]"),
        ("0:1:0", "step > 0"),
    ],
)
def test_bad_alphas_are_refused_before_anything_is_written(
    text_runs: dict[str, Path],
    tmp_path: Path,
    alphas: str,
    text: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "wise"
    _refused(
        ["interpolate", str(text_runs["ft"]), "--alphas", alphas, "-o", str(out)], 2, text, capsys
    )
    assert not out.exists()


def test_mismatched_models_and_sets_are_refused(
    text_runs: dict[str, Path],
    image_runs: list[Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "x"
    ft = str(text_runs["ft"])
    # Another architecture (and classes) as the base.
    _refused(["interpolate", ft, "--base", str(image_runs[0]), "-o", str(out)], 2, "differ", capsys)
    # α is never chosen on the test set; an unknown set is named.
    _refused(["interpolate", ft, "--select", "test", "-o", str(out)], 2, "--select test", capsys)
    _refused(["interpolate", ft, "--select", "nope", "-o", str(out)], 2, "--select nope", capsys)
    # A soup of one run, of runs on other data, of a folder that is no run.
    _refused(["soup", str(image_runs[0]), "-o", str(out)], 2, "at least two", capsys)
    _refused(["soup", ft, str(image_runs[0]), "-o", str(out)], 2, "differ in", capsys)
    _refused(["soup", str(tmp_path), str(image_runs[0]), "-o", str(out)], 3, str(tmp_path), capsys)
    _refused(["interpolate", str(tmp_path), "-o", str(out)], 3, "not a finished graft run", capsys)
    assert not out.exists()
    # An existing output is kept unless --force.
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _refused(["interpolate", ft, "--alphas", "0,1", "-o", str(out)], 2, "already exists", capsys)
    assert (out / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".x.tmp-*"))


def test_recomputed_batchnorm_statistics_are_the_soups_own_activations(
    image_runs: list[Path], tmp_path: Path
) -> None:
    from graft.config import load_config
    from graft.pipeline import Loaders
    from graft.prepare import load_splits

    out = tmp_path / "uniform-bn"
    args = ["soup", *map(str, image_runs), "--uniform", "--bn-stats", "recompute", "-o", str(out)]
    assert main(args) == 0
    soup = load_model(out)
    model = soup.backbone.model.eval()
    name, first = next(
        (n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
    )
    # By hand: the mean over the training batches of each batch's per-channel input mean (the
    # first BatchNorm's input does not depend on any BatchNorm statistics).
    config = load_config(image_runs[0] / "config.yaml")
    train = load_splits(config.data).train
    loaders = Loaders(soup.backbone.preprocess, None, False, 0, 0)
    batch_means: list[torch.Tensor] = []
    hook = first.register_forward_pre_hook(
        lambda _m, inputs: batch_means.append(inputs[0].mean(dim=(0, 2, 3)))
    )
    with torch.no_grad():
        for batch in loaders.loader(train, None, 2 * config.train.batch_size, shuffle=False):
            model(**batch["inputs"])
    hook.remove()
    expected = torch.stack(batch_means).mean(0)
    torch.testing.assert_close(first.running_mean, expected, rtol=1e-4, atol=1e-5)
    # ... and not the average of the ingredients' statistics.
    states = [load_file(str(r / "model" / "model.safetensors")) for r in image_runs]
    key = f"{name}.running_mean"
    assert not torch.allclose(sum(s[key] for s in states) / 3, first.running_mean, atol=1e-4)
    assert _results(out)["soup"]["bn_stats"] == "recompute"
