"""The study engine: one multi-objective Optuna study over the chosen strategies, run by Ray Tune.

Modules, from the driver down to one trial:

- :mod:`~search.study.engine`: ``run_study``, the Tuner around the searcher;
- :mod:`~search.study.searcher`: the Optuna searcher that records trials;
- :mod:`~search.study.space`: the define-by-run space, and which options a run leaves unsampled (no Ray);
- :mod:`~search.study.storage`: storage URLs, recording trials, resume bookkeeping (no Ray);
- :mod:`~search.study.samplers`: the Optuna samplers by name (no Ray);
- :mod:`~search.study.halving`: the rung rule that stops dominated trials;
- :mod:`~search.study.display`: live and plain progress lines in the driver;
- :mod:`~search.study.timeshare`: equal compute time per strategy;
- :mod:`~search.study.cluster`: joining Ray (a cluster, or the local one), per-trial resources;
- :mod:`~search.study.localray`: the local Ray's head process, started early by the command line;
- :mod:`~search.study.rundir`: the run directory's layout and settings file;
- :mod:`~search.study.lock`: one driver per run directory;
- :mod:`~search.study.reaper`: no process of a local Ray outlives its driver;
- :mod:`~search.study.artifacts`: trial files into the run directory from any node;
- :mod:`~search.study.trainable`: the Ray Tune trainable around one trial;
- :mod:`~search.study.limits`: one trial in a child process held to time and memory limits;
- :mod:`~search.study.trial`: one trial through :mod:`search.pipeline` (no Ray).

Nothing here is imported eagerly: the command line checks its input with the Ray-free modules before
anything imports Ray.
"""
