"""``graft compare``: every strategy × seed of a config on the same splits and budget.

:mod:`~graft.compare.spec` (the ``compare:`` block and the runs it plans),
:mod:`~graft.compare.stats` (statistics over seeds; no torch) and :mod:`~graft.compare.runner`
(running, resuming and summarizing: :func:`compare`, :func:`run_compare`). The report is
:mod:`graft.reports.compare`.
"""

from graft.compare.runner import CompareResult, compare, run_compare

__all__ = ["CompareResult", "compare", "run_compare"]
