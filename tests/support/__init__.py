"""Helpers the test suites, the benchmark and deploy/measure_memory.py share.

- :mod:`tests.support.waiting`: ``wait_until``, the one poll-with-deadline loop.
- :mod:`tests.support.live`: WSGI apps served over real HTTP in a thread (unit tests).
- :mod:`tests.support.harness`: the services as real processes on free ports.
- :mod:`tests.support.loadgen`: steady client load and its figures (chaos tests).
- :mod:`tests.support.raw`: raw-socket HTTP requests (hostile-input tests).
"""
