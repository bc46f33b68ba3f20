"""graft's HTML reports: one self-contained file each, built from run directories alone.

:mod:`~graft.reports.html` (formatting, tables, the page) and :mod:`~graft.reports.figures`
(matplotlib figures as embedded PNGs) are the shared, public pieces; one module per report kind
uses them: :mod:`~graft.reports.run` (one ``graft fit``), :mod:`~graft.reports.compare`
(strategies × seeds) and :mod:`~graft.reports.search` (a hyperparameter search). A report reads
run directories (:mod:`graft.rundir`); it never imports the training loop.
"""
