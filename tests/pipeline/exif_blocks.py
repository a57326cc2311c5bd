"""Hand-built EXIF blocks (TIFF structure), valid or malformed, for the decoder tests.

Pillow writes only well-formed EXIF; real cameras and editors write all kinds of broken ones, so the
tests build the bytes themselves: any tag, type, count, value or offset, in either byte order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ORIENTATION = 0x0112
EXIF_IFD = 0x8769
GPS_IFD = 0x8825
# TIFF field types: 1 BYTE, 2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL, 7 UNDEFINED, 9 SLONG, 10 SRATIONAL,
# 11 FLOAT, 12 DOUBLE; 0, 6, 8, 13+ are invalid or rare.
VALUE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
# Tags Pillow knows a type for (writing them back with the wrong type is what broke exif_transpose).
KNOWN_TAGS = (0x0100, 0x0101, 0x0102, 0x0103, 0x010F, 0x0110, 0x011A, 0x011B, 0x0128, 0x0131, 0x0132, 0x0213)


@dataclass(frozen=True)
class Entry:
    tag: int
    field_type: int
    count: int
    value: bytes  # the 4-byte value/offset slot, or (when longer) data placed after the IFD

    def packed_size(self) -> int:
        return VALUE_SIZES.get(self.field_type, 1) * self.count


def exif_block(entries: list[Entry], *, big_endian: bool = True, next_ifd: int = 0) -> bytes:
    """An APP1-style EXIF block (``Exif\\0\\0``, then TIFF: header, one IFD of ``entries``, their data).

    An entry whose ``value`` is longer than 4 bytes gets it stored after the IFD and an offset to it;
    otherwise ``value`` (padded to 4 bytes) is the slot itself, whatever type and count claim.
    """
    order = ">" if big_endian else "<"
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    slots, data = [], b""
    for entry in entries:
        if len(entry.value) > 4:
            slots.append(struct.pack(order + "I", data_offset + len(data)))
            data += entry.value
        else:
            slots.append(entry.value.ljust(4, b"\0"))
    ifd = struct.pack(order + "H", len(entries))
    for entry, slot in zip(entries, slots, strict=True):
        ifd += struct.pack(order + "HHI", entry.tag, entry.field_type, entry.count) + slot
    ifd += struct.pack(order + "I", next_ifd)
    tiff_header = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(order + "I", 8)
    return b"Exif\0\0" + tiff_header + ifd + data


def short(value: int, *, big_endian: bool = True) -> bytes:
    return struct.pack(">H" if big_endian else "<H", value).ljust(4, b"\0")


def orientation(value: int, *, big_endian: bool = True) -> Entry:
    return Entry(ORIENTATION, 3, 1, short(value, big_endian=big_endian))


# Wrong-typed companions of a valid orientation tag: text where a number belongs, numbers where text
# belongs, odd counts, and offsets pointing out of the block.
WRONG_TYPED = {
    "ascii_resolution": Entry(0x011A, 2, 4, b"abc\0"),
    "ascii_width": Entry(0x0100, 2, 4, b"wide"),
    "undefined_resolution_unit": Entry(0x0128, 7, 4, b"\x01\x02\x03\x04"),
    "rational_make": Entry(0x010F, 5, 1, b"\0\0\0\x10"),
    "byte_compression": Entry(0x0103, 1, 4, b"\xff\xff\xff\xff"),
    "ascii_ycbcr_positioning": Entry(0x0213, 2, 8, b"centered"),
    "huge_count_software": Entry(0x0131, 2, 0x7FFF_FFFF, b"\0\0\0\x08"),
    "offset_past_end": Entry(0x0132, 2, 20, b"\x7f\xff\xff\xff"),
    "exif_ifd_loop": Entry(EXIF_IFD, 4, 1, b"\0\0\0\x08"),
    "gps_ifd_out_of_range": Entry(GPS_IFD, 4, 1, b"\xff\xff\xff\xf0"),
    "invalid_type_0": Entry(0x011B, 0, 1, b"\0\0\0\x01"),
    "invalid_type_99": Entry(0x011B, 99, 1, b"\0\0\0\x01"),
}
