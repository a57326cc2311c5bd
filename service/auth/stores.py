"""Which key store a configuration uses: the shared PostgreSQL database when FACE_DATABASE_URL is set."""

from __future__ import annotations

from service.auth.keys import KeyStore, SqliteKeyStore
from service.postgres.pool import PoolOptions
from service.settings import Settings


def key_pool_options(settings: Settings) -> PoolOptions:
    return PoolOptions(
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        timeout_s=settings.db_timeout_s,
    )


def open_key_store(settings: Settings) -> KeyStore:
    """The configured store. PostgreSQL: migrated and connected now (KeyStoreUnavailableError if not).

    The SQLite store touches nothing until used (its file is made by ``ensure_schema``).
    """
    if settings.database_url is None:
        return SqliteKeyStore.in_data_dir(settings.data_dir)
    from service.auth.postgres_keys import PostgresKeyStore  # psycopg only for a shared database

    return PostgresKeyStore.open(settings.database_url.get_secret_value(), key_pool_options(settings))
