"""``graft compare`` and ``graft report``: the spec and its errors, planning, resume, statistics,
and real (tiny) compares on scikit-learn digits with the random-init timm test EfficientNet."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_image_run_config, write_yaml
from scipy import stats

import graft.recorder
import graft.run
from graft.cli import main
from graft.compare import run_compare
from graft.compare.records import collect_runs
from graft.compare.spec import (
    CompareSpec,
    load_compare,
    parse_spec,
    plan_runs,
    spec_from_options,
)
from graft.compare.stats import (
    RunRecord,
    compare_to_best,
    describe,
    gap_closed,
    significance_note,
    summarize,
)
from graft.config import load_config
from graft.errors import DataError, UsageError

LEADERBOARD_ROW = re.compile(r"<tr(?: class=\"best\")?><td class=\"num\">\d+</td>")


def base_config(out: Path, epochs: int = 1) -> dict[str, Any]:
    """digits at 32 px, 120 training images: about a second per run on one thread."""
    return tiny_image_run_config(
        {"dataset": "digits"},
        out,
        data={"train_size": 120, "val_size": 40, "test_size": 60},
        train={"epochs": epochs, "batch_size": 40},
        optim={"lr": 3e-3},
    )


def count_fits(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Wrap graft.run.fit (which compare looks up at call time) to record each call's resume."""
    real: Callable[..., Any] = graft.run.fit
    calls: list[Any] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("resume"))
        return real(*args, **kwargs)

    monkeypatch.setattr(graft.run, "fit", counting)
    return calls


# --------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"strategies": ["full", "linear_probe", "ful"]}, r"(?s)c\.yaml: compare\.strategies\[2\]: "
         r"unknown strategy 'ful'.*did you mean 'full'"),
        ({"strategies": ["full", {"name": "lp_ft", "nope": 1}]},
         r"compare\.strategies\[1\]\.nope: not a parameter of strategy 'lp_ft'"),
        ({"strategies": ["full", "full"]}, r"compare\.strategies\[1\]: 'full' is already"),
        ({"strategies": []}, r"compare\.strategies: List should have at least 1 item"),
        ({"strategies": ["full", {"label": "x"}]},
         r"compare\.strategies\[1\]\.name: Field required"),
        ({"strategies": ["full"], "seed": 3}, r"compare\.seed: unknown field"),
        ({"strategies": ["full"], "seeds": 0}, r"compare\.seeds: a count from 1"),
        ({"strategies": ["full"], "seeds": [1, 1]}, r"compare\.seeds: .*distinct"),
        ({"strategies": ["full"], "overrides": {"linear_prob": {"optim.lr": 1}}},
         r"compare\.overrides\.linear_prob: not a strategy"),
        ({"strategies": ["full"], "overrides": {"full": {"data.seed": 1}}},
         r"compare\.overrides\.full\.data\.seed: the same for every run"),
        ({"strategies": ["full"], "overrides": {"full": {"train.seed": 1}}},
         r"compare\.overrides\.full\.train\.seed"),
    ],
)  # fmt: skip
def test_spec_errors_name_the_field(block: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_spec(block, "c.yaml")


def test_plan_is_strategies_times_seeds_on_the_same_splits(tmp_path: Path) -> None:
    base = base_config(tmp_path)
    base["train"]["seed"] = 10
    spec = parse_spec(
        {
            "strategies": ["full", "linear_probe", {"name": "lp_ft", "label": "lpft_slow",
                                                    "ft_lr_scale": 0.05}],
            "seeds": 2,
            "overrides": {"linear_probe": {"optim.lr": 3e-2}, "lp_ft": {"train": {"epochs": 2}}},
        }
    )  # fmt: skip
    runs = plan_runs(base, spec, tmp_path / "cmp")
    assert [r.name for r in runs] == [
        "full-seed10", "linear_probe-seed10", "lpft_slow-seed10",
        "full-seed11", "linear_probe-seed11", "lpft_slow-seed11",
    ]  # fmt: skip
    assert {r.config.data.seed for r in runs} == {0}  # same splits for every run
    assert [r.config.train.seed for r in runs] == [10, 10, 10, 11, 11, 11]
    lr = {r.label: r.config.optim.lr for r in runs}
    assert lr == {"full": 3e-3, "linear_probe": 3e-2, "lpft_slow": 3e-3}
    lpft = runs[2].config
    assert lpft.strategy.name == "lp_ft" and lpft.strategy.params() == {"ft_lr_scale": 0.05}
    assert lpft.train.epochs == 2 and lpft.train.batch_size == 40  # a section merges
    assert all(r.run_dir == tmp_path / "cmp" / r.name for r in runs)
    # A config hash per run, as graft fit computes it: the seeds differ, so do the hashes.
    assert len({r.config_hash for r in runs}) == 6
    assert CompareSpec.model_validate({"strategies": ["full"], "seeds": [3, 7]}).seed_values(0) == [
        3,
        7,
    ]


def test_compare_block_and_command_line(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    data["compare"] = {
        "strategies": ["full", "linear_probe"],
        "seeds": 3,
        "overrides": {"linear_probe": {"optim.lr": 0.01}},
    }
    path = write_yaml(tmp_path / "c.yaml", data)
    base, spec = load_compare(path, ["train.epochs=2"])
    assert "compare" not in base and base["train"]["epochs"] == 2
    assert spec is not None and [e.key for e in spec.strategies] == ["full", "linear_probe"]
    # Command-line strategies replace the block's; its overrides still apply.
    cli = spec_from_options(spec, strategies="linear_probe,lp_ft", seeds="0,5", name="x")
    assert [e.key for e in cli.strategies] == ["linear_probe", "lp_ft"]
    assert cli.seeds == [0, 5] and cli.name == "x" and cli.overrides == spec.overrides
    # graft fit reads the same file as its base config.
    assert load_config(path).strategy.name == "full"
    with pytest.raises(UsageError, match="needs strategies"):
        spec_from_options(None)
    with pytest.raises(UsageError, match="--seeds"):
        spec_from_options(spec, seeds="three")


def test_command_line_strategies_drop_the_overrides_of_labels_left_out(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    data["compare"] = {
        "strategies": ["full", {"name": "full", "label": "warm"}],
        "overrides": {"warm": {"init.head": "linear_probe"}, "lp_ft": {"optim.lr": 0.01}},
    }
    _, spec = load_compare(write_yaml(tmp_path / "c.yaml", data))
    cli = spec_from_options(spec, strategies="lp_ft")
    # `warm` is not run, so its override is not this compare's; a strategy name's stays.
    assert cli.overrides == {"lp_ft": {"optim.lr": 0.01}}
    assert spec_from_options(spec, strategies="warm").overrides == spec.overrides


# --------------------------------------------------------------------------- statistics


def test_describe_mean_std_and_t_interval() -> None:
    s = describe([0.70, 0.72, 0.74])
    half = stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)
    assert s.mean == pytest.approx(0.72) and s.std == pytest.approx(0.02)
    assert (s.low, s.high) == (pytest.approx(0.72 - half), pytest.approx(0.72 + half))
    assert describe([0.9, 1.0, 1.0], bounds=(0, 1)).high == 1.0  # clipped
    one = describe([0.8])
    assert one.mean == 0.8 and math.isnan(one.std) and math.isnan(one.low)


def test_significance_paired_welch_and_undecidable() -> None:
    best = {0: 0.90, 1: 0.92, 2: 0.91}
    close = {0: 0.89, 1: 0.92, 2: 0.90}
    far = {0: 0.80, 1: 0.83, 2: 0.81}
    paired = compare_to_best(best, close)
    assert paired.kind == "paired t-test"
    assert paired.p == pytest.approx(stats.ttest_rel([0.90, 0.92, 0.91], [0.89, 0.92, 0.90]).pvalue)
    assert paired.significant is False
    assert compare_to_best(best, far).significant is True
    welch = compare_to_best(best, {5: 0.89, 6: 0.90})  # other seeds: not paired
    assert welch.kind == "Welch t-test"
    assert welch.p == pytest.approx(
        stats.ttest_ind([0.90, 0.92, 0.91], [0.89, 0.90], equal_var=False).pvalue
    )
    assert compare_to_best({0: 0.9}, {0: 0.8}).p is None  # one seed: cannot be judged
    # Constant differences are decided exactly (scipy would give NaN).
    assert compare_to_best({0: 0.9, 1: 0.8}, {0: 0.85, 1: 0.75}).p == 0.0
    assert compare_to_best({0: 0.9, 1: 0.8}, {0: 0.9, 1: 0.8}).p == 1.0


def _t2_two_sided_p(t: float) -> float:
    """Student's t with 2 degrees of freedom has a closed form, F(t) = 1/2 + t / (2√(t² + 2)):
    the two-sided p of |t| is 1 − |t| / √(t² + 2). No scipy involved."""
    return 1.0 - abs(t) / math.sqrt(t * t + 2.0)


def test_statistics_match_values_worked_out_by_hand() -> None:
    """Known answers, from the closed form of the t distribution with 2 degrees of freedom."""
    # t(0.975; 2) = (2p − 1) / √(2p(1 − p)) = 0.95 / √0.04875 = 4.302652...
    s = describe([0.80, 0.82, 0.84])
    assert s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    half = 0.95 / math.sqrt(0.04875) * 0.02 / math.sqrt(3)
    assert half == pytest.approx(0.049683, abs=1e-6)
    assert (s.low, s.high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    # Paired by seed: differences 0.02, 0.01, 0.04 have mean 0.07/3 and std √(7/30000), so
    # t = √7 and p = 1 − √7/3 = 0.118083... The seeds are given in different orders: only a
    # pairing by seed number gives this p (by position the differences would be 0.02, 0.02,
    # 0.03: t = 7 and p = 1 − 7/√51 = 0.0198).
    best = {1: 0.82, 0: 0.80, 2: 0.84}
    other = {2: 0.80, 0: 0.78, 1: 0.81}
    paired = compare_to_best(best, other)
    assert paired.kind == "paired t-test"
    assert paired.p == pytest.approx(1 - math.sqrt(7) / 3, abs=1e-9)
    assert paired.p == pytest.approx(_t2_two_sided_p(math.sqrt(7)), abs=1e-12)
    # Welch with two values each and equal variances has exactly 2 degrees of freedom:
    # t = 0.10 / √(1e-4 + 1e-4) = 5√2, p = 1 − 5/√26 = 0.019419...
    welch = compare_to_best({0: 0.90, 1: 0.92}, {5: 0.80, 6: 0.82})
    assert welch.kind == "Welch t-test"
    assert welch.p == pytest.approx(1 - 5 / math.sqrt(26), abs=1e-9)


def _record(label: str, seed: int, acc: float, extra: float | None = None) -> RunRecord:
    results: dict[str, Any] = {
        "strategy": label,
        "test": {"accuracy": acc, "macro_f1": acc - 0.05},
        "validation": {"accuracy": acc},
        "extra": {} if extra is None else {"shifted": {"accuracy": extra}},
        "wall_time_s": 10.0,
        "trainable_params": 100,
        "peak_rss_mb": 500.0,
    }
    return RunRecord(label, seed, Path(f"{label}-seed{seed}"), results)


def test_summarize_orders_and_marks() -> None:
    records = (
        [_record("a", s, acc) for s, acc in enumerate([0.90, 0.92, 0.91])]
        + [_record("b", s, acc, 0.5) for s, acc in enumerate([0.89, 0.92, 0.90])]
        + [_record("c", s, acc) for s, acc in enumerate([0.80, 0.83, 0.81])]
    )
    rows = summarize(records)
    assert [r.label for r in rows] == ["a", "b", "c"]
    assert [r.tied_with_best for r in rows] == [True, True, False]
    assert rows[0].is_best and rows[1].test.kind == "paired t-test"
    assert rows[1].extra["shifted"].mean == 0.5 and "shifted" not in rows[0].extra
    assert "paired" in significance_note(rows)
    single = summarize([_record("a", 0, 0.9), _record("b", 0, 0.8)])
    assert single[1].tied_with_best is None
    assert "cannot be judged" in significance_note(single)


def test_gap_closed_is_the_share_of_the_baseline_to_oracle_distance() -> None:
    rows = summarize(
        [_record("source", s, 0.8, x) for s, x in enumerate([0.50, 0.60, 0.55])]
        + [_record("mcc", s, 0.8, x) for s, x in enumerate([0.70, 0.72, 0.74])]
        + [_record("worse", s, 0.8, 0.45) for s in range(3)]
        + [_record("plain", s, 0.8) for s in range(3)]  # no target score
    )
    oracle = [_record("oracle", s, 0.9, x) for s, x in enumerate([0.90, 0.95])]
    gap = gap_closed(rows, oracle, "source")
    assert gap.sets == ["shifted"] and gap.oracle["shifted"].mean == pytest.approx(0.925)
    # Means 0.55 (baseline), 0.72, 0.45 against 0.925: worked out by hand.
    assert gap.closed["mcc"]["shifted"] == pytest.approx(0.17 / 0.375)
    assert gap.closed["worse"]["shifted"] == pytest.approx(-0.10 / 0.375)
    assert gap.closed["source"]["shifted"] == 0.0
    assert math.isnan(gap.closed["plain"]["shifted"])
    no_gap = [_record("oracle", 0, 0.9, 0.5)]  # no better than the baseline: nothing to close
    assert math.isnan(gap_closed(rows, no_gap, "source").closed["mcc"]["shifted"])
    with pytest.raises(ValueError, match="no strategy is labelled 'sauce'"):
        gap_closed(rows, oracle, "sauce")
    with pytest.raises(ValueError, match="share no extra evaluation set"):
        gap_closed(rows, [_record("oracle", 0, 0.9)], "source")


# --------------------------------------------------------------------------- real compares


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Any]:
    """2 strategies × 2 seeds, in process (the calls are counted by the tests that rerun it)."""
    out = tmp_path_factory.mktemp("cmp")
    base = base_config(out)
    spec = parse_spec({"strategies": ["full", "linear_probe"], "seeds": 2,
                       "overrides": {"linear_probe": {"optim.lr": 1e-2}}})  # fmt: skip
    result = run_compare(base, spec, default_name="digits", isolate=False, quiet=True)
    return out, base, result


def test_compare_writes_runs_summary_and_report(finished: tuple[Path, dict[str, Any], Any]) -> None:
    out, _, result = finished
    cdir = out / "compare-digits"
    assert result.compare_dir == cdir and result.ran == 4 and result.skipped == 0
    names = ["full-seed0", "linear_probe-seed0", "full-seed1", "linear_probe-seed1"]
    assert [r.run_dir.name for r in result.records] == names
    for name in names:
        assert (cdir / name / "results.json").is_file()
        assert (cdir / "configs" / f"{name}.yaml").is_file()
    manifest = json.loads((cdir / "compare.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == names and manifest["spec_hash"]
    summary = json.loads((cdir / "summary.json").read_text())
    assert summary["evaluated_on"] == "test"
    assert {s["label"] for s in summary["strategies"]} == {"full", "linear_probe"}
    for s in summary["strategies"]:
        assert s["accuracy"]["n"] == 2 and len(s["accuracy"]["ci95"]) == 2
    with (cdir / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
    with (cdir / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[0]["trainable_params"].isdigit()
    text = result.report.read_text()
    assert len(LEADERBOARD_ROW.findall(text)) == 2
    assert "compare:" in text  # the spec, beside the exact configs


def test_rerun_skips_finished_runs_and_a_new_spec_is_refused(
    finished: tuple[Path, dict[str, Any], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base, _ = finished
    calls = count_fits(monkeypatch)
    spec = parse_spec({"strategies": ["full", "linear_probe"], "seeds": 2,
                       "overrides": {"linear_probe": {"optim.lr": 1e-2}}})  # fmt: skip
    again = run_compare(base, spec, default_name="digits", isolate=False, quiet=True, resume=True)
    assert calls == [] and again.ran == 0 and again.skipped == 4
    more = parse_spec({"strategies": ["full", "linear_probe"], "seeds": 3})
    with pytest.raises(UsageError, match=r"holds a different compare \(new runs full-seed2"):
        run_compare(base, more, default_name="digits", isolate=False, quiet=True)
    assert calls == []
    with pytest.raises(DataError, match="no compare to resume"):
        run_compare(base, spec, default_name="other", isolate=False, quiet=True, resume=True)


def test_killed_compare_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = base_config(tmp_path, epochs=2)
    spec = parse_spec({"strategies": ["linear_probe"], "seeds": 3})
    real_save = graft.recorder.save_checkpoint

    def save_then_die(*args: Any, **kwargs: Any) -> None:
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed after the first epoch of the first run

    monkeypatch.setattr(graft.recorder, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_compare(base, spec, default_name="k", isolate=False, quiet=True)
    monkeypatch.setattr(graft.recorder, "save_checkpoint", real_save)
    cdir = tmp_path / "compare-k"
    assert (cdir / "linear_probe-seed0" / "checkpoint.pt").is_file()
    # A run killed before its first epoch ended leaves a directory with nothing to resume.
    stale = cdir / "linear_probe-seed2"
    stale.mkdir()
    (stale / "config.yaml").write_text("partial")
    calls = count_fits(monkeypatch)
    result = run_compare(base, spec, default_name="k", isolate=False, quiet=True)
    assert calls == [cdir / "linear_probe-seed0", False, False]  # resumed, then two fresh
    assert result.ran == 3
    history = (cdir / "linear_probe-seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2]


def test_graft_report_over_run_dirs_and_compare_dir(
    finished: tuple[Path, dict[str, Any], Any], tmp_path: Path
) -> None:
    out, _, _ = finished
    cdir = out / "compare-digits"
    runs = [str(cdir / n) for n in ("full-seed0", "full-seed1", "linear_probe-seed0")]
    target = tmp_path / "r" / "report.html"
    assert main(["report", *runs, "--output", str(target)]) == 0
    text = target.read_text()
    assert len(LEADERBOARD_ROW.findall(text)) == 2
    assert text.count("data:image/png;base64,") >= 4
    # A compare directory: its runs with their labels and seeds.
    records, notes = collect_runs([cdir])
    assert sorted((r.label, r.seed) for r in records) == [
        ("full", 0), ("full", 1), ("linear_probe", 0), ("linear_probe", 1)
    ]  # fmt: skip
    assert notes == []
    assert main(["report", str(cdir), "-o", str(tmp_path / "c.html")]) == 0


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "c.yaml", base_config(tmp_path / "out"))
    assert main(["compare", str(path), "--strategies", "full,linear_prob"]) == 2
    err = capsys.readouterr().err
    assert "compare.strategies[1]: unknown strategy 'linear_prob'" in err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written
    assert main(["compare", str(path)]) == 2
    assert "needs strategies" in capsys.readouterr().err
    assert main(["compare", str(path), "--strategies", "full", "train.epochs=0"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 3
    assert "not a directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 3  # not a run directory
    assert "config.yaml" in capsys.readouterr().err


def test_cli_compare_runs_each_fit_in_a_child_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default path: `graft fit` in a fresh interpreter; one seed cannot judge significance."""
    data = base_config(tmp_path / "out")
    data["compare"] = {"strategies": ["linear_probe"], "seeds": 1}
    path = write_yaml(tmp_path / "one.yaml", data)
    assert main(["compare", str(path), "--quiet"]) == 0
    cdir = tmp_path / "out" / "compare-one"
    assert capsys.readouterr().out.startswith(str(cdir))
    results = json.loads((cdir / "linear_probe-seed0" / "results.json").read_text())
    assert results["strategy"] == "linear_probe"
    assert json.loads((cdir / "isolation.json").read_text()) == {"linear_probe-seed0": True}
    assert "cannot be judged" in (cdir / "report.html").read_text()


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "configs").glob("compare_*.yaml")),
    ids=lambda p: p.name,
)
def test_shipped_compare_configs_plan(path: Path, tmp_path: Path) -> None:
    base, spec = load_compare(path)
    assert spec is not None
    runs = plan_runs(base, spec, tmp_path)
    assert len(runs) == 15 and len({r.config.data.seed for r in runs}) == 1
