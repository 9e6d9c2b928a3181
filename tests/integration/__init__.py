"""Tests that start the real services as processes and talk HTTP to them."""
