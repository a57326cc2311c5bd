"""Logging filters for the server: credentials never reach the access log; floods are capped.

* ``CredentialRedactingFilter``: uvicorn writes the full URL, query string included, to the access
  log; a credential-like query parameter (``api_key=...``) or anything shaped like one of our keys
  is replaced by ``[redacted]`` before the record is formatted.
* ``RepeatCapFilter``: a client (or a full file-descriptor table) can make the same warning repeat
  thousands of times a second (``socket.accept() out of system resource``, ``Exceeded concurrency
  limit.``, ``Invalid HTTP request received.``): one record per message per interval passes, the
  next one that passes says how many were dropped.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from urllib.parse import unquote_plus

from service.auth.keys import KEY_PREFIX

REDACTED = "[redacted]"
# Query parameter names (lower case, without "-", "_" and ".") that carry a credential.
CREDENTIAL_PARAMETERS = frozenset(
    {"apikey", "xapikey", "key", "token", "accesstoken", "bearer", "authorization", "secret", "password"}
)
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}_[0-9a-f]+_[A-Za-z0-9_-]+")
_QUERY_PART = re.compile(r"([?&])([^=&#\s\"]*)=([^&#\s\"]*)")

# Messages a flood repeats (prefixes), on the loggers that emit them.
FLOOD_MESSAGES: dict[str, tuple[str, ...]] = {
    "asyncio": ("socket.accept() out of system resource",),
    "uvicorn.error": ("Exceeded concurrency limit.", "Invalid HTTP request received."),
}
FLOOD_INTERVAL_S = 60.0


def normalized_parameter(name: str) -> str:
    return re.sub(r"[-_.]", "", unquote_plus(name)).lower()


def is_credential_parameter(name: str) -> bool:
    return normalized_parameter(name) in CREDENTIAL_PARAMETERS


def redact_credentials(text: str) -> str:
    """``text`` (a URL, a log line) with credential query values and key-shaped strings replaced."""

    def query_part(match: re.Match[str]) -> str:
        separator, name, _value = match.groups()
        return f"{separator}{name}={REDACTED}" if is_credential_parameter(name) else match.group(0)

    return _KEY_SHAPE.sub(REDACTED, _QUERY_PART.sub(query_part, text))


class CredentialRedactingFilter(logging.Filter):
    """Redacts credential query values, key-shaped strings and ``known_secrets`` (FACE_API_KEY, which
    may have any shape) wherever they appear in a record."""

    def __init__(self, known_secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.known_secrets = tuple(secret for secret in known_secrets if secret)

    def _redact(self, text: str) -> str:
        for secret in self.known_secrets:
            text = text.replace(secret, REDACTED)
        return redact_credentials(text)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self._redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) if isinstance(a, str) else a for a in record.args)
        return True


class RepeatCapFilter(logging.Filter):
    """Pass one record per message prefix per ``interval_s``; the next passed one counts the dropped."""

    def __init__(
        self,
        prefixes: Iterable[str],
        *,
        interval_s: float = FLOOD_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_passed: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        prefix = next((p for p in self.prefixes if message.startswith(p)), None)
        if prefix is None:
            return True
        now = self._clock()
        with self._lock:
            last = self._last_passed.get(prefix)
            if last is not None and now - last < self.interval_s:
                self._dropped[prefix] = self._dropped.get(prefix, 0) + 1
                return False
            self._last_passed[prefix] = now
            dropped = self._dropped.pop(prefix, 0)
        if dropped:
            record.msg = f"{message} ({dropped} more like this dropped in the last {self.interval_s:.0f} s)"
            record.args = ()
        return True


def _install_once(
    logger: logging.Logger, kind: type[logging.Filter], make: Callable[[], logging.Filter]
) -> None:
    # Replaced, not stacked: a second server in one process (tests) gets its own, once.
    for existing in [f for f in logger.filters if isinstance(f, kind)]:
        logger.removeFilter(existing)
    logger.addFilter(make())


def install_server_log_filters(*, known_secrets: Iterable[str] = ()) -> None:
    """Attach the filters to the loggers uvicorn and asyncio write to (again: replace them)."""
    secrets = tuple(known_secrets)
    for name in ("uvicorn.access", "uvicorn.error"):
        _install_once(
            logging.getLogger(name), CredentialRedactingFilter, partial(CredentialRedactingFilter, secrets)
        )
    for name, prefixes in FLOOD_MESSAGES.items():
        _install_once(logging.getLogger(name), RepeatCapFilter, partial(RepeatCapFilter, prefixes))
