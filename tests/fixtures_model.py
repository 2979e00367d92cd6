"""Fixtures for this area (see tests/conftest.py)."""
