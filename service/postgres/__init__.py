"""PostgreSQL plumbing shared by the gallery and key stores: the pool, URL redaction, migrations."""
