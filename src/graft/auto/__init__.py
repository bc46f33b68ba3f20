"""``graft auto DATA --budget 15m``: probe, screen, search and train within one wall-time budget.

:mod:`~graft.auto.setup` (options, what is read from the data, the base config),
:mod:`~graft.auto.budget` (the clock and the cost model) and :mod:`~graft.auto.runner` (the
steps: :func:`run_auto`).
"""

from graft.auto.runner import Auto, Step, run_auto
from graft.auto.setup import AutoOptions, DataInfo, base_config

__all__ = ["Auto", "AutoOptions", "DataInfo", "Step", "base_config", "run_auto"]
