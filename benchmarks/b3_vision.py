"""B3 — vision fine-tuning: graft ``lp_ft`` vs fastai ``fine_tune``, time to the same accuracy.

Same model (graft's ``build_backbone("tf_efficientnet_lite0")``: timm + the offline ImageNet
weights, new 10-class head, same seed), same data (a seeded Fashion-MNIST subset resized once to
64 px; the same test subset serves as both frameworks' per-epoch validation set), same threads,
channels_last for both, batches of 64, no workers, in fresh subprocesses.

* graft: ``graft.train.train`` with the ``lp_ft`` plan over 3 epochs (1 head-only epoch on the
  frozen-prefix feature cache, then 2 epochs of everything at lr × 0.1), AdamW lr 1e-3, cosine.
* fastai 2.8: ``Learner(dls, model, splitter=[body, head], metrics=accuracy)`` then
  ``learn.fine_tune(2)`` with its defaults (1 frozen epoch, then 2 unfrozen; base_lr 2e-3,
  lr_mult 100, one-cycle, fastai's Adam with wd 0.01, BatchNorm of the frozen body still training).

The clock starts when training starts (model and data already built) and is read after each
epoch's validation. Target accuracy = the lower of the two final test accuracies; compared: the
time at which each first reaches it.

    .venv-bench/bin/python benchmarks/b3_vision.py [--quick] [--repeats 1]
"""

from __future__ import annotations

import time
from typing import Any

import torch
from common import base_parser, child_main, median, run_child, save, table, verdict, wait_for_quiet
from torch import nn


def _data(spec: dict[str, Any]) -> tuple[Any, Any]:
    from data import fashion_mnist

    return (
        fashion_mnist("train", spec["n"], spec["size"], seed=0),
        fashion_mnist("test", spec["n_test"], spec["size"], seed=1),
    )


def run_graft(spec: dict[str, Any]) -> dict[str, Any]:
    from graft.models import build_backbone
    from graft.optim import OptimizerFactory, ScheduleFactory
    from graft.pipeline import Loaders
    from graft.strategies import build_plan
    from graft.train import Hooks, LoopSettings, train

    torch.manual_seed(0)
    bb = build_backbone("tf_efficientnet_lite0", num_classes=10, image_size=spec["size"])
    bb.model.to(memory_format=torch.channels_last)
    tr, te = _data(spec)
    loaders = Loaders(bb.preprocess, None, True, 0, 0)
    tl = loaders.loader(tr.examples(), tr.labels, 64, shuffle=True, train=True)
    vl = loaders.loader(te.examples(), te.labels, 128, shuffle=False)
    plan = build_plan("lp_ft", {}, groups=bb.group_names(), epochs=spec["epochs"])
    settings = LoopSettings(
        optimizer=OptimizerFactory("adamw", lr=1e-3, weight_decay=0.01),
        schedule=ScheduleFactory("cosine"),
    )
    curve: list[tuple[float, float]] = []
    started = time.perf_counter()

    def epoch_end(state: Any, record: dict[str, Any], *_: Any) -> None:
        curve.append((time.perf_counter() - started, record["val_accuracy"]))

    train(bb.model, bb.groups, plan, tl, vl, tr.names, settings, Hooks(epoch_end=epoch_end))
    return {"curve": curve, "plan": [f"{p.name}:{p.epochs}" for p in plan.phases]}


class _Wrapped(nn.Module):
    """graft's model as fastai wants it: one positional input; ``body`` and ``head`` children."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.body, self.head = model.body, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixel_values=x))


def run_fastai(spec: dict[str, Any]) -> dict[str, Any]:
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fine_tune)
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.torch_core import params
    from torch.utils.data import TensorDataset

    from graft.models import build_backbone

    torch.manual_seed(0)
    bb = build_backbone("tf_efficientnet_lite0", num_classes=10, image_size=spec["size"])
    model = _Wrapped(bb.model).to(memory_format=torch.channels_last)
    tr, te = _data(spec)
    prep = bb.preprocess
    train_ds = TensorDataset(tr.normalized(prep.mean, prep.std), torch.from_numpy(tr.labels))
    test_ds = TensorDataset(te.normalized(prep.mean, prep.std), torch.from_numpy(te.labels))
    dls = DataLoaders(
        DataLoader(train_ds, bs=64, shuffle=True, num_workers=0),
        DataLoader(test_ds, bs=128, num_workers=0),
        device=torch.device("cpu"),
    )
    curve: list[tuple[float, float]] = []

    class ChannelsLastClock(Callback):
        order = 60  # after the Recorder (50): its values for the epoch are in

        def before_fit(self) -> None:
            if not hasattr(self, "started"):
                self.started = time.perf_counter()

        def before_batch(self) -> None:
            self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) for x in self.xb)

        def after_epoch(self) -> None:
            curve.append((time.perf_counter() - self.started, float(self.recorder.values[-1][-1])))

    clock = ChannelsLastClock()
    learn = Learner(
        dls,
        model,
        loss_func=CrossEntropyLossFlat(),
        metrics=accuracy,
        splitter=lambda m: [params(m.body), params(m.head)],
        cbs=[clock],
    )
    from fastai.callback.progress import ProgressCallback

    # No progress bar (graft's is off here too).
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, ProgressCallback)])
    with learn.no_logging():
        learn.fine_tune(spec["epochs"] - 1)  # + 1 frozen epoch (freeze_epochs=1): same total
    return {"curve": curve}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    return run_graft(spec) if spec["impl"] == "graft" else run_fastai(spec)


def _time_to(curve: list[list[float]], target: float) -> float:
    for t, acc in curve:
        if acc >= target - 1e-9:
            return t
    return float("nan")


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    quick = args.quick
    repeats = args.repeats or 1
    spec = {
        "n": 256 if quick else int(2000 * args.scale),
        "n_test": 128 if quick else int(1000 * min(1.0, args.scale)),
        "size": 64,
        "epochs": 3,
    }
    runs: dict[str, list[dict[str, Any]]] = {"graft": [], "fastai": []}
    loads = []
    for r in range(repeats):
        for impl in ["graft", "fastai"] if r % 2 == 0 else ["fastai", "graft"]:
            loads.append(wait_for_quiet(args.max_load, args.max_wait))
            res = run_child(__file__, {"impl": impl, **spec})
            runs[impl].append(res)
            print(f"  {impl} repeat {r + 1}: (s, test acc) per epoch {res['curve']}")
    rows, ratios, records = [], [], []
    for r in range(repeats):
        g, f = runs["graft"][r]["curve"], runs["fastai"][r]["curve"]
        target = min(g[-1][1], f[-1][1])
        tg, tf = _time_to(g, target), _time_to(f, target)
        ratios.append(tg / tf)
        records.append({"target_acc": target, "graft_s": tg, "fastai_s": tf})
    ratio = median(ratios)
    for impl in ("graft", "fastai"):
        rs = runs[impl]
        rows.append(
            [
                impl,
                median([x["curve"][-1][1] for x in rs]),
                median([x["curve"][-1][0] for x in rs]),
                median([rec[f"{impl}_s"] for rec in records]),
                median([x["peak_rss_mb"] for x in rs]),
            ]
        )
    table(
        f"B3 Lite0 64px, {spec['n']} train / {spec['n_test']} test, 3 epochs ({repeats} repeats)",
        ["impl", "final acc", "total s", "s to target", "RSS MiB"],
        rows,
    )
    print(
        f"  target acc {records[0]['target_acc']:.4f}; time-to-target graft/fastai = {ratio:.3f} "
        + verdict(ratio, 0.5, True)
    )
    save(
        "b3_vision",
        {
            **spec,
            "repeats": repeats,
            "graft_curves": [x["curve"] for x in runs["graft"]],
            "fastai_curves": [x["curve"] for x in runs["fastai"]],
            "per_repeat": records,
            "ratio_time_to_target": ratio,
            "peak_rss_mb": {k: median([x["peak_rss_mb"] for x in v]) for k, v in runs.items()},
            "load1": loads,
        },
        quick,
        args.no_save,
    )


if __name__ == "__main__" and not child_main(child):
    main()
