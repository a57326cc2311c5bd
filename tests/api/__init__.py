"""API, auth and CLI tests."""
