"""Shared pytest wiring: fixtures live in tests/fixtures_*.py, one file per area."""

pytest_plugins = [
    "tests.fixtures_services",
    "tests.fixtures_data",
    "tests.fixtures_model",
    "tests.fixtures_source",
]
