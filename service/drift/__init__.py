"""Rolling drift: the recent logged traffic compared with the served model's reference data.

Modules, in the order a run flows through them:

- ``monitor``: the thread in each worker that claims an interval slot for the served model, has
  the run done, and refreshes the metrics and ``GET /drift`` from the served model's latest run
  recorded in the store;
- ``runs``: the ``drift_runs`` table (claims of a slot per model, and results), beside the
  prediction log;
- ``process``: the idle-priority child process the runs execute in, off the worker's
  interpreter;
- ``runner``: what the child runs (``python -m service.drift.runner``): read the window,
  compute, keep the snapshot;
- ``priority``: the child's CPU priority, lowered before its imports;
- ``window``: the most recent logged instances, from the prediction log, typed by the contract;
- ``compute``: Evidently's data drift preset over the features and the score;
- ``summary``: the typed result of a run, as stored and as served;
- ``snapshots``: the snapshot and report files, with retention;
- ``routes``: ``GET /drift`` and ``GET /drift/report``.

docs/drift.md documents the behaviour and the settings; docs/metrics-and-traces.md the metrics.
"""
