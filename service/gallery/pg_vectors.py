"""Bulk reads of the PostgreSQL gallery's embeddings, fast enough to rebuild a replica's index at start.

A plain ``SELECT`` makes one Python object per row and per vector (seconds per 100k faces); ``COPY ...
TO STDOUT (FORMAT BINARY)`` streams the rows in PostgreSQL's binary row format instead, and since every
row has the same size (two non-null fields: a BIGINT and a pgvector ``vector`` of the pinned size) the
whole stream is one numpy structured array: parsed without a Python loop.

The binary COPY stream: an 11-byte signature, an int32 flags word and an int32 header-extension length
(plus that many bytes), then per row an int16 field count and per field an int32 byte length and the
value's binary send form, then the int16 trailer -1. All integers are big-endian. pgvector sends a
``vector`` as uint16 dimensions, uint16 unused, then that many big-endian float32.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import sql

from service.gallery.store import EmbeddingSizeError, IntArray
from service.pipeline.types import FloatArray

_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER_FIXED_SIZE = len(_SIGNATURE) + 8  # signature, int32 flags, int32 extension length
_TRAILER = b"\xff\xff"  # int16 -1
_FIELDS_PER_ROW = 2
_ID_SIZE = 8
_VECTOR_HEADER_SIZE = 4  # uint16 dim, uint16 unused

_COPY_QUERY = (
    "COPY (SELECT index_id, embedding FROM faces {where} ORDER BY index_id) TO STDOUT (FORMAT BINARY)"
)


class CopyFormatError(ValueError):
    """The COPY stream is not what ``COPY ... (FORMAT BINARY)`` of (BIGINT, vector) rows sends."""


def read_embeddings(
    conn: psycopg.Connection[tuple[object, ...]],
    embedding_size: int,
    where_sql: str = "",
    params: Sequence[object] = (),
) -> tuple[IntArray, FloatArray]:
    """``(index_id, embedding)`` of the faces ``where_sql`` selects (all by default), by index_id.

    ``where_sql``: SQL text from code, never from input, e.g. ``"WHERE index_id = ANY(%s)"``; ``params``
    fill its ``%s`` placeholders (bound client-side: COPY takes no server-side parameters). Runs in the
    connection's current transaction. Returns int64 ids and a C-contiguous float32 (N, embedding_size)
    array; raises ``EmbeddingSizeError`` when a stored embedding has another size.
    """
    if embedding_size < 0:
        raise ValueError(f"embedding size must not be negative, got {embedding_size}")
    query = sql.SQL(_COPY_QUERY).format(where=sql.SQL(where_sql))
    stream = bytearray()
    with conn.cursor() as cursor, cursor.copy(query, list(params) if params else None) as copy:
        for chunk in copy:
            stream += chunk
    return parse_copy_stream(stream, embedding_size)


def _row_dtype(embedding_size: int) -> np.dtype[np.void]:
    return np.dtype(
        [
            ("field_count", ">i2"),
            ("id_length", ">i4"),
            ("index_id", ">i8"),
            ("vector_length", ">i4"),
            ("dim", ">u2"),
            ("unused", ">u2"),
            ("values", ">f4", (embedding_size,)),
        ]
    )


def parse_copy_stream(stream: bytes | bytearray, embedding_size: int) -> tuple[IntArray, FloatArray]:
    """The ids and embeddings in a whole binary COPY stream of ``(index_id, embedding)`` rows."""
    body_start = _body_start(stream)
    if len(stream) < body_start + len(_TRAILER) or stream[-len(_TRAILER) :] != _TRAILER:
        raise CopyFormatError("the COPY stream does not end with the -1 trailer")
    body = memoryview(stream)[body_start : len(stream) - len(_TRAILER)]
    row_dtype = _row_dtype(embedding_size)
    if len(body) % row_dtype.itemsize:
        _raise_first_bad_row(body, embedding_size)
    rows = np.frombuffer(body, dtype=row_dtype)
    expected_vector_length = _VECTOR_HEADER_SIZE + 4 * embedding_size
    if not (
        np.all(rows["field_count"] == _FIELDS_PER_ROW)
        and np.all(rows["id_length"] == _ID_SIZE)
        and np.all(rows["vector_length"] == expected_vector_length)
        and np.all(rows["dim"] == embedding_size)
    ):
        _raise_first_bad_row(body, embedding_size)
    ids = rows["index_id"].astype(np.int64)
    embeddings = np.ascontiguousarray(rows["values"], dtype=np.float32).reshape(len(rows), embedding_size)
    return ids, embeddings


def _body_start(stream: bytes | bytearray) -> int:
    if len(stream) < _HEADER_FIXED_SIZE or stream[: len(_SIGNATURE)] != _SIGNATURE:
        raise CopyFormatError("the COPY stream does not start with PostgreSQL's binary COPY signature")
    (extension_length,) = struct.unpack_from(">i", stream, len(_SIGNATURE) + 4)
    if extension_length < 0:
        raise CopyFormatError(f"the COPY stream's header extension has a negative length {extension_length}")
    return _HEADER_FIXED_SIZE + int(extension_length)


@dataclass(frozen=True)
class _RawRow:
    field_lengths: tuple[int, ...]
    index_id: int | None
    dim: int | None


def _raise_first_bad_row(body: memoryview, embedding_size: int) -> None:
    """Walk the rows one by one (only when the fast parse failed) to say which one is wrong."""
    offset = 0
    while offset < len(body):
        row, offset = _read_raw_row(body, offset)
        if row.field_lengths != (_ID_SIZE, _VECTOR_HEADER_SIZE + 4 * (row.dim or 0)) or row.dim is None:
            raise CopyFormatError(
                f"a COPY row has fields of byte lengths {row.field_lengths}, not (id, vector)"
            )
        if row.dim != embedding_size:
            raise EmbeddingSizeError(
                f"the face with index_id {row.index_id} has an embedding of size {row.dim}, but the "
                f"gallery's embeddings have size {embedding_size}"
            )
    raise CopyFormatError("the COPY stream's rows are malformed")


def _read_raw_row(body: memoryview, offset: int) -> tuple[_RawRow, int]:
    try:
        (field_count,) = struct.unpack_from(">h", body, offset)
        offset += 2
        lengths: list[int] = []
        values: list[memoryview] = []
        for _ in range(field_count):
            (length,) = struct.unpack_from(">i", body, offset)
            offset += 4
            lengths.append(length)
            values.append(body[offset : offset + max(length, 0)])
            offset += max(length, 0)
    except struct.error:
        raise CopyFormatError("the COPY stream ends in the middle of a row") from None
    if offset > len(body):
        raise CopyFormatError("the COPY stream ends in the middle of a row")
    index_id = struct.unpack(">q", values[0])[0] if lengths[:1] == [_ID_SIZE] else None
    dim = struct.unpack_from(">H", values[1])[0] if len(lengths) == 2 and lengths[1] >= 2 else None
    return _RawRow(tuple(lengths), index_id, dim), offset
