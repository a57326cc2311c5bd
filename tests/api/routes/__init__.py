"""Route tests, one module per resource (service/api/routes/<resource>.py)."""
