"""Benchmarks of airflow-provider-loyalty: streaming to S3, the triggerer, paging.

Run them all with ``python -m benchmarks.run_all`` (``make bench``); figures are printed one per
line and written to ``docs/benchmarks.md``. See :mod:`benchmarks.run_all` for the options.
"""
