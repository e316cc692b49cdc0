"""The reproduction study: the paper's comparative claims measured on the embedded data.

    python -m dr study --out runs/study [--seeds 0 1 2 3 4] [--iters 800] [--results results/reproduction.json]

Trains every row of the study (the ``tiny`` preset, the tutorial recipe, several seeds), then
collects the metrics into one results JSON with mean and spread over seeds, the Fig. 1 and Fig. 5
analyses, the CPU latency of the trained budgeted models, and one verdict per claim of the paper.
Finished runs are kept and reused; an interrupted study resumes where it stopped.

The package: :mod:`~dr.study.grid` (the rows and seeds), :mod:`~dr.study.runner` (training them,
resumable, several processes), :mod:`~dr.study.collect` (metrics into one results dict),
:mod:`~dr.study.statistics` and :mod:`~dr.study.verdicts` (the claims and their rules),
:mod:`~dr.study.report` (Markdown tables); the figures are :func:`dr.explore.figures.study_figures`.

The rows (Tables 1-4 and the hard gates) are listed in :mod:`dr.study.grid`.
"""
