"""The test suites: unit/ (in-process, seconds), integration/ (real processes), support/ (shared helpers)."""
