"""Unit tests of echokit.resilience, on a manual clock."""
