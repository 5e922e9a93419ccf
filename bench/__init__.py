"""Sluice's benchmark: the same simulated vLLM backend, reached directly and through Sluice.

``python -m bench`` (``make bench``) starts a simulator and a gateway in a throw-away directory,
alternates requests between the two paths so that drift on a small machine hits both equally,
and writes a Markdown report plus raw numbers under ``bench/results/``.

Modules: :mod:`bench.stack` (processes), :mod:`bench.client` (timed requests),
:mod:`bench.report` (percentiles and the table), :mod:`bench.__main__` (the run itself).
"""
