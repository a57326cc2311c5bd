"""ChangeFollower: the thread that keeps a replica's search index in step with a shared store.

It waits for the feed's announcement (LISTEN/NOTIFY) or the poll interval, whichever comes first,
then asks the gallery to catch up. A database that is down is retried with a growing pause (capped),
logged once per outage rather than once per attempt; the gallery keeps serving its last state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.gallery.store import ChangeFeed, GalleryError

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0


class ChangeFollower:
    def __init__(self, feed: ChangeFeed, catch_up: Callable[[], object], *, poll_interval_s: float) -> None:
        self._feed = feed
        self._catch_up = catch_up
        self._poll_interval_s = poll_interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gallery-change-follower", daemon=True)
        self._failing_since: float | None = None

    @property
    def failing_since(self) -> float | None:
        """Monotonic time of the first failure of the outage now going on (None: following fine)."""
        return self._failing_since

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff = self._poll_interval_s
        while not self._stopping.is_set():
            try:
                self._feed.wait_for_change(self._poll_interval_s)
                if self._stopping.is_set():
                    return
                self._catch_up()
            except GalleryError as error:  # the database is down, or the index could not be rebuilt
                self._note_failure(error)
                self._stopping.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            except Exception:  # never let the follower die silently: a dead one means a stale replica
                logger.exception("change follower: unexpected error; retrying")
                self._note_failure(None)
                self._stopping.wait(backoff)
                continue
            if self._failing_since is not None:
                logger.info("change follower: following the shared gallery again")
            self._failing_since = None
            backoff = self._poll_interval_s

    def _note_failure(self, error: GalleryError | None) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            if error is not None:
                logger.warning("change follower: %s; retrying until it answers", error)
