"""Shared pytest configuration. Fixtures of one area live beside its tests."""
