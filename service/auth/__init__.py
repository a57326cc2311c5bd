"""API keys (hashed, scoped) and the authenticator used by the API's dependencies."""
