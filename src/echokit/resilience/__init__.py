"""Policies B applies to its calls to A, each usable and testable without Flask or a network.

Each takes a :class:`~echokit.resilience.clock.Clock`, so tests drive time by hand.
"""
