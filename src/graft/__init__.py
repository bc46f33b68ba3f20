"""graft: fine-tune pretrained models on your data, and measure which strategy works best.

The Python API mirrors the command line::

    import graft

    result = graft.fit("configs/fashion_mnist_lite0.yaml", ["train.epochs=2"])
    print(result.test_accuracy, result.run_dir)
    model = graft.load_model(result.run_dir)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["FitResult", "RunConfig", "fit", "load_config", "load_model"]

if TYPE_CHECKING:
    from graft.artifact import load_model
    from graft.config import RunConfig, load_config
    from graft.run import FitResult, fit


def __getattr__(name: str) -> Any:
    # Lazy: `import graft` stays cheap (torch, timm and transformers load on first use).
    if name in {"fit", "FitResult"}:
        from graft import run

        return getattr(run, name)
    if name in {"RunConfig", "load_config"}:
        from graft import config

        return getattr(config, name)
    if name == "load_model":
        from graft.artifact import load_model

        return load_model
    raise AttributeError(f"module 'graft' has no attribute {name!r}")
