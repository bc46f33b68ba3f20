"""B4 — the frozen-prefix feature cache: linear-probe epoch time with vs without it.

graft's real loop (``graft.train.train``, ``linear_probe`` plan) runs the same probe twice, in
fresh subprocesses: ``feature_cache=True`` (the default: the body's outputs are computed once,
then every epoch trains the head on stored features) and ``feature_cache=False`` (every epoch is
a forward pass through the frozen body in eval mode, plus the head's training). Compared: the
median ``epoch_time_s`` of the epochs after the first (graft's timer around an epoch's steps).
The one-off cost of building the cache (train + validation features) is reported beside it.

* EfficientNet-Lite0 (ImageNet weights) at 96 px on 2,000 Fashion-MNIST images, batch 64;
* MiniLM on 2,000 VADER movie snippets, batch 32 (dynamic padding, length-grouped).

    .venv-bench/bin/python benchmarks/b4_cache.py [--quick] [--repeats 2]
"""

from __future__ import annotations

import time
from typing import Any

import torch
from common import base_parser, child_main, median, run_child, save, table, verdict, wait_for_quiet


def child(spec: dict[str, Any]) -> dict[str, Any]:
    from data import fashion_mnist, vader_movies

    from graft.models import build_backbone
    from graft.optim import OptimizerFactory, ScheduleFactory
    from graft.pipeline import Loaders
    from graft.strategies import build_plan
    from graft.train import Hooks, LoopSettings, train

    if spec["task"] == "lite0":
        bb = build_backbone("tf_efficientnet_lite0", num_classes=10, image_size=spec["size"])
        bb.model.to(memory_format=torch.channels_last)
        tr = fashion_mnist("train", spec["n"], spec["size"])
        va = fashion_mnist("test", spec["n_val"], spec["size"])
        loaders = Loaders(bb.preprocess, None, True, 0, 0)
        tl = loaders.loader(tr.examples(), tr.labels, spec["batch"], shuffle=True, train=True)
        vl = loaders.loader(va.examples(), va.labels, 2 * spec["batch"], shuffle=False)
        names = tr.names
    else:
        bb = build_backbone("minilm", num_classes=2, max_length=128)
        text = vader_movies(spec["n"], spec["n_val"])
        tl, vl = text.graft_loaders(bb, spec["batch"], 2 * spec["batch"])
        names = text.names
    plan = build_plan("linear_probe", {}, groups=bb.group_names(), epochs=spec["epochs"])
    settings = LoopSettings(
        optimizer=OptimizerFactory("adamw", lr=1e-3, weight_decay=0.01),
        schedule=ScheduleFactory("cosine"),
        feature_cache=spec["cache"],
    )
    messages: list[str] = []
    started = time.perf_counter()
    state = train(
        bb.model, bb.groups, plan, tl, vl, names, settings, Hooks(message=messages.append)
    )
    total = time.perf_counter() - started
    build = [float(m.split(" in ")[1].rstrip("s")) for m in messages if "feature cache" in m]
    return {
        "epoch_times": [r["epoch_time_s"] for r in state.history],
        "val_accuracy": [r["val_accuracy"] for r in state.history],
        "cache_build_s": build[0] if build else 0.0,
        "train_call_s": total,
    }


def main() -> None:
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    quick = args.quick
    repeats = args.repeats or (1 if quick else 2)
    tasks = {
        "lite0": {
            "n": 256 if quick else int(2000 * args.scale),
            "n_val": 128 if quick else 500,
            "size": 96,
            "batch": 64,
        },
        "minilm": {
            "n": 128 if quick else int(2000 * args.scale),
            "n_val": 64 if quick else 500,
            "batch": 32,
        },
    }
    epochs = 3
    rows = []
    for task, sizes in tasks.items():
        later: dict[bool, list[float]] = {True: [], False: []}
        first: dict[bool, list[float]] = {True: [], False: []}
        builds, rss, accs, loads = [], {True: [], False: []}, {True: [], False: []}, []
        for r in range(repeats):
            for cache in [True, False] if r % 2 == 0 else [False, True]:
                loads.append(wait_for_quiet(args.max_load, args.max_wait))
                res = run_child(__file__, {"task": task, "cache": cache, "epochs": epochs, **sizes})
                later[cache].append(median(res["epoch_times"][1:]))
                first[cache].append(res["epoch_times"][0])
                rss[cache].append(res["peak_rss_mb"])
                accs[cache].append(res["val_accuracy"][-1])
                if cache:
                    builds.append(res["cache_build_s"])
                print(f"  {task} cache={cache}: epochs {res['epoch_times']}")
        with_c, without = median(later[True]), median(later[False])
        speedup = without / with_c
        rows.append(
            [
                task,
                sizes["n"],
                without,
                with_c,
                speedup,
                verdict(speedup, 20, False),
                median(builds),
                median(rss[True]),
                median(rss[False]),
            ]
        )
        save(
            "b4_cache",
            {
                "task": task,
                **sizes,
                "epochs": epochs,
                "repeats": repeats,
                "epoch_s_after_first": {"cache": later[True], "no_cache": later[False]},
                "first_epoch_s": {"cache": first[True], "no_cache": first[False]},
                "cache_build_s": builds,
                "speedup": speedup,
                "final_val_accuracy": {"cache": accs[True], "no_cache": accs[False]},
                "peak_rss_mb": {"cache": median(rss[True]), "no_cache": median(rss[False])},
                "load1": loads,
            },
            quick,
            args.no_save,
        )
    table(
        f"B4 linear probe, epochs after the first ({repeats} repeats, medians)",
        [
            "task",
            "n",
            "no cache s",
            "cache s",
            "speed-up",
            "target",
            "cache build s",
            "RSS c",
            "RSS no c",
        ],
        rows,
    )


if __name__ == "__main__" and not child_main(child):
    main()
