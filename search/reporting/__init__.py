"""Comparative Pareto reports: load run directories, build a report model, render it.

The split follows Optuna's visualization: :mod:`search.reporting.load` reads run directories (the
only I/O on the way in), :func:`search.reporting.model.build_report` turns what was read into a
:class:`~search.reporting.model.Report` without touching anything else, and the renderers
(:mod:`~search.reporting.html`, :mod:`~search.reporting.markdown`, :mod:`~search.reporting.png`,
:mod:`~search.reporting.trials_csv`) only draw that model. ``search.report`` wires them together.
:mod:`~search.reporting.intervals` holds the one piece of statistics: accuracies' confidence intervals.
"""
