"""Face verification and identification service (no torch in this package)."""
