"""What every deployment command writes beside its model: the description of the model
(``graft_model.json``, the source's with this variant's details added), the tokenizer of a text
model, and the source run's ``config.yaml`` and ``run.json``, so that ``graft eval`` and
``graft benchmark`` find the data the model was measured on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from graft.artifact import META, Predictor
from graft.atomic import atomic_write_text
from graft.deploy.variants import run_dir_of_variant
from graft.rundir import CONFIG, RUN_META


def copy_companions(source: Predictor, folder: Path) -> None:
    """The tokenizer folder of ``source`` and its run's config and record, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = source.folder / "tokenizer"
    if tokenizer.is_dir():
        shutil.copytree(tokenizer, folder / "tokenizer")
    run_dir = run_dir_of_variant(source)
    if run_dir is not None:
        shutil.copyfile(run_dir / CONFIG, folder / CONFIG)
        if (run_dir / RUN_META).is_file():
            shutil.copyfile(run_dir / RUN_META, folder / RUN_META)


def write_meta(source: Predictor, folder: Path, **details: Any) -> dict[str, Any]:
    """``graft_model.json`` of a variant of ``source``: the source's description (labels,
    preprocessing, backbone, metrics, provenance) with ``details`` added (``format``, and how
    the variant was made), and ``source`` naming the folder it came from."""
    meta = {**source.meta, **details, "source": str(source.folder.resolve())}
    atomic_write_text(folder / META, json.dumps(meta, indent=1))
    return meta
