"""Row helpers every gallery backend shares: timestamps, pagination cursors, stored metadata."""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

from service.gallery.store import UNREADABLE_METADATA_KEY, InvalidCursorError


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


_CURSOR_TEXT = re.compile(r"s(0|[1-9][0-9]{0,18})")  # what encode_cursor writes: "s" + a seq
_MAX_SEQ = 2**63 - 1  # a 64-bit integer (SQLite INTEGER, PostgreSQL BIGINT): larger overflows the query


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    match = _CURSOR_TEXT.fullmatch(text)
    if match is None or int(match.group(1)) > _MAX_SEQ:
        raise InvalidCursorError(f"invalid pagination cursor {cursor!r}")
    return int(match.group(1))


def stored_metadata(text: object) -> dict[str, Any]:
    """The stored metadata object; a row that isn't JSON (hand-edited, older version) must not break reads."""
    try:
        value = json.loads(text) if isinstance(text, str | bytes) else text
    except (ValueError, RecursionError):
        return {UNREADABLE_METADATA_KEY: "stored metadata is not valid JSON"}
    return value if isinstance(value, dict) else {UNREADABLE_METADATA_KEY: "stored metadata is not an object"}
