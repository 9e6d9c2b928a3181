"""Unit tests, one module per source module (tests/unit/resilience/ for echokit.resilience); no processes."""
