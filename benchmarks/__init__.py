"""Benchmarks of airflow-provider-loyalty, each against a baseline or control measured in the same run.

1. :mod:`~benchmarks.stream`: a 1 GiB export to S3 against a bare copy; memory; ``csv.gz``; pre-built files.
2. :mod:`~benchmarks.verification`: verify + write + sha256 of one batch on one core.
3. :mod:`~benchmarks.triggerer`: 1,000 triggers on one event loop.
4. :mod:`~benchmarks.paging`: client CPU per page of a member's history, JSON and XML.
5. :mod:`~benchmarks.bookkeeping`: bookkeeping per batch over 10,000 batches; ``next_kwargs`` and XCom.

Run them all with ``python -m benchmarks.run_all`` (``make bench``): figures are printed one per
line and written to ``docs/benchmarks.md``, charts to ``docs/img/bench-*.png`` (matplotlib). See
:mod:`benchmarks.run_all` for the options.
"""
