"""After fine-tuning, in weight space: interpolation between two ends (WiSE-FT,
:mod:`graft.merging.interpolate`) and averages of several runs (model soups,
:mod:`graft.merging.soup`). Both write a model directory that every later command reads like a
run's (:mod:`graft.merging.output`)."""
