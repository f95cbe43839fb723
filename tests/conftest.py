"""Shared pytest setup."""

pytest_plugins = ["tests.sdk_fixtures"]
