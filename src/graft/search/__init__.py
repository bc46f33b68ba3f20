"""``graft search``: hyperparameter search over any config field, with Optuna.

:mod:`~graft.search.space` (the ``search:`` block and its validation), :mod:`~graft.search.study`
(storage, sampler, pruner, trial counting), :mod:`~graft.search.worker` (one worker's trial loop),
:mod:`~graft.search.summary` (search.json, best_config.yaml, the report) and
:mod:`~graft.search.runner` (the command: :func:`search`).
"""

from graft.search.runner import SearchResult, search
from graft.search.study import BEST_CONFIG, default_storage, open_storage, redact

__all__ = ["BEST_CONFIG", "SearchResult", "default_storage", "open_storage", "redact", "search"]
