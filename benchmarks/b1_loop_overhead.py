"""B1 — loop overhead: graft's training loop vs a minimal hand-written PyTorch loop.

Both train the same model (graft's ``build_backbone``, same seed) with the same optimizer (AdamW,
lr 1e-3 / 5e-5, weight decay 0.01) on the same data, in fresh subprocesses, for the same number of
optimizer steps per epoch. The time compared is the median epoch time after a warm-up epoch:

* graft: ``graft.train.train`` (the real loop: phases, LambdaLR schedule, per-group optimizer
  groups, its DataLoader and batching) with a ``full`` plan; ``epoch_time_s`` of each epoch record
  (graft's own timer around the epoch's steps; the per-epoch validation is outside it).
* plain: ``model.train(); for x, y in loader: loss.backward(); opt.step()`` timed the same way,
  as an expert writes it: fused AdamW, bf16 autocast where it is faster (graft's side runs its
  own defaults: ``train.precision: auto``, the malloc setting).

Vision: EfficientNet-Lite0 at 64 px, batch 64, channels_last for both. graft gets the uint8
pre-resized images (its batches are scaled and normalised per batch, as in a real run); the plain
loop gets float tensors normalised up front in a ``TensorDataset`` (``shuffle=True``).
Text: MiniLM, batch 32, VADER movie snippets. The plain loop iterates over exactly the batches
graft's sampler makes (materialised before timing: same padding, same shapes), so the ratio is
loop overhead only; graft's own batching (padding each batch) stays inside graft's timer.

    .venv-bench/bin/python benchmarks/b1_loop_overhead.py [--quick] [--repeats 3]
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    base_parser,
    child_main,
    median,
    run_child,
    save,
    table,
    verdict,
    wait_for_quiet,
)


def _build(task: str) -> Any:
    from graft.models import build_backbone

    torch.manual_seed(0)
    if task == "lite0":
        return build_backbone("tf_efficientnet_lite0", num_classes=10, image_size=64)
    return build_backbone("minilm", num_classes=2, max_length=128)


def _graft_loaders(spec: dict[str, Any], backbone: Any) -> tuple[Any, Any, list[str]]:
    from data import fashion_mnist, vader_movies

    from graft.pipeline import Loaders

    if spec["task"] == "lite0":
        train = fashion_mnist("train", spec["n"], 64)
        val = fashion_mnist("test", 128, 64)
        loaders = Loaders(backbone.preprocess, None, True, 0, 0)
        tl = loaders.loader(train.examples(), train.labels, spec["batch"], shuffle=True, train=True)
        vl = loaders.loader(val.examples(), val.labels, 128, shuffle=False)
        return tl, vl, train.names
    text = vader_movies(spec["n"], 128)
    tl, vl = text.graft_loaders(backbone, spec["batch"], 64)
    return tl, vl, text.names


def run_graft(spec: dict[str, Any]) -> dict[str, Any]:
    from graft.optim import OptimizerFactory, ScheduleFactory
    from graft.runtime import keep_freed_memory, resolve_precision
    from graft.strategies import build_plan
    from graft.train import Hooks, LoopSettings, train

    backbone = _build(spec["task"])
    model = backbone.model
    if spec["task"] == "lite0":
        model.to(memory_format=torch.channels_last)
    tl, vl, names = _graft_loaders(spec, backbone)
    epochs = spec["epochs"]
    plan = build_plan("full", {}, groups=backbone.group_names(), epochs=epochs)
    keep_freed_memory()  # what graft.prepare does for every run
    settings = LoopSettings(
        optimizer=OptimizerFactory("adamw", lr=spec["lr"], weight_decay=0.01),
        schedule=ScheduleFactory("cosine"),
        precision=resolve_precision("auto", torch.device("cpu"), cnn=backbone.is_cnn),
    )
    started = time.perf_counter()
    state = train(model, backbone.groups, plan, tl, vl, names, settings, Hooks())
    total = time.perf_counter() - started
    times = [r["epoch_time_s"] for r in state.history]
    return {"epoch_times": times, "steps_per_epoch": len(tl), "train_call_s": total}


def run_plain(spec: dict[str, Any]) -> dict[str, Any]:
    from torch.utils.data import DataLoader, TensorDataset

    from graft.pipeline import set_epoch
    from graft.runtime import fast_bf16

    backbone = _build(spec["task"])
    model = backbone.model
    opt_model = model
    times: list[float] = []
    # As an expert writes it: fused AdamW; bf16 autocast where it is faster (a CPU with native
    # bf16, and not a CNN: Lite0 trains slower in bf16 there, measured).
    bf16 = fast_bf16(torch.device("cpu")) and not backbone.is_cnn

    def forward(**inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(**inputs)

    if spec["task"] == "lite0":
        from data import fashion_mnist

        train = fashion_mnist("train", spec["n"], 64)
        prep = backbone.preprocess
        x = train.normalized(prep.mean, prep.std)
        ds = TensorDataset(x, torch.from_numpy(train.labels))
        loader = DataLoader(ds, batch_size=spec["batch"], shuffle=True)
        model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(
            opt_model.parameters(), lr=spec["lr"], weight_decay=0.01, fused=True
        )
        model.train()
        for _ in range(spec["epochs"]):
            t0 = time.perf_counter()
            for xb, yb in loader:
                xb = xb.contiguous(memory_format=torch.channels_last)
                opt.zero_grad()
                loss = F.cross_entropy(forward(pixel_values=xb).float(), yb)
                loss.backward()
                opt.step()
            times.append(time.perf_counter() - t0)
        return {"epoch_times": times, "steps_per_epoch": len(loader)}
    # Text: exactly graft's batches (same order, same padding), materialised before timing.
    tl, _, _ = _graft_loaders(spec, backbone)
    opt = torch.optim.AdamW(opt_model.parameters(), lr=spec["lr"], weight_decay=0.01, fused=True)
    model.train()
    for epoch in range(spec["epochs"]):
        set_epoch(tl, epoch)
        batches = [(b["inputs"], b["targets"]) for b in tl]
        t0 = time.perf_counter()
        for inputs, yb in batches:
            opt.zero_grad()
            loss = F.cross_entropy(forward(**inputs).float(), yb)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return {"epoch_times": times, "steps_per_epoch": len(batches)}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    return run_graft(spec) if spec["impl"] == "graft" else run_plain(spec)


def main() -> None:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    p.add_argument("--task", choices=["lite0", "minilm"], default=None, help="only this task")
    args = p.parse_args()
    quick = args.quick
    repeats = args.repeats or (1 if quick else 3)
    tasks = {
        # n examples → n / batch optimizer steps per epoch; epoch 1 is the warm-up.
        "lite0": {"n": 256 if quick else int(1024 * args.scale), "batch": 64, "lr": 1e-3},
        "minilm": {"n": 128 if quick else int(512 * args.scale), "batch": 32, "lr": 5e-5},
    }
    epochs = 2 if quick else args.epochs
    rows, records = [], []
    for task, sizes in tasks.items():
        if args.task and task != args.task:
            continue
        per: dict[str, list[float]] = {"graft": [], "plain": []}
        rss: dict[str, list[float]] = {"graft": [], "plain": []}
        loads = []
        for r in range(repeats):
            # Alternate the order so that slow drift of the machine hits both alike.
            order = ["graft", "plain"] if r % 2 == 0 else ["plain", "graft"]
            for impl in order:
                loads.append(wait_for_quiet(args.max_load, args.max_wait))
                spec = {"impl": impl, "task": task, "epochs": epochs, **sizes}
                res = run_child(__file__, spec)
                measured = res["epoch_times"][1:]  # drop the warm-up epoch
                per[impl].append(median(measured))
                rss[impl].append(res["peak_rss_mb"])
                print(f"  {task} {impl} repeat {r + 1}: epochs {res['epoch_times']}")
        g, p = median(per["graft"]), median(per["plain"])
        steps = res["steps_per_epoch"]
        ratio = g / p
        rows.append(
            [
                task,
                steps,
                g,
                p,
                ratio,
                verdict(ratio, 1.0, True),
                median(rss["graft"]),
                median(rss["plain"]),
            ]
        )
        records.append(
            {
                "task": task,
                **sizes,
                "epochs": epochs,
                "steps_per_epoch": steps,
                "repeats": repeats,
                "graft_epoch_s": per["graft"],
                "plain_epoch_s": per["plain"],
                "median_graft_s": g,
                "median_plain_s": p,
                "ratio_graft_over_plain": ratio,
                "peak_rss_mb": {k: median(v) for k, v in rss.items()},
                "load1": loads,
            }
        )
    table(
        f"B1 loop overhead (median epoch time, {repeats} repeats, warm-up epoch dropped)",
        ["task", "steps", "graft s", "plain s", "graft/plain", "target", "RSS graft", "RSS plain"],
        rows,
    )
    for rec in records:
        save("b1_loop_overhead", rec, quick, args.no_save)


if __name__ == "__main__" and not child_main(child):
    main()
