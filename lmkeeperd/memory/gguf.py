"""Read the metadata section of a GGUF file, and nothing after it.

Theory of operation
-------------------
A GGUF file (llama.cpp's model format, versions 2 and 3) starts with:

    magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count × ( key: string | value_type u32 | value )
    tensor infos ... | padding | tensor data (gigabytes)

All little endian; a string is a u64 byte length then UTF-8 bytes; an array is
an element type u32, a u64 count, then the elements. We parse the key/value
pairs and stop where the tensor infos begin, so a 40 GB model costs a few
hundred kilobytes of reading.

What keeps it cheap and safe:
- Reads go through `_Cursor`, which fetches 1 MiB chunks and never touches a
  byte at or beyond `max_bytes` (64 MiB by default) nor beyond the end of file:
  either is a `GGUFError`, never another exception.
- Arrays are kept only when they are short numeric/bool arrays (the per-layer
  arrays an estimate needs have one entry per layer). String arrays, such as
  `tokenizer.ggml.tokens` with 150 000 entries, are walked without building a
  single Python string (each element's length is read and its bytes skipped);
  only their length is kept, as a `SkippedArray`.
- Long string values (chat templates) are skipped the same way.

GGUF v1 (before August 2023) used 32-bit counts; it is refused with a message,
as are big-endian files and versions newer than 3.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lmkeeperd.errors import GGUFError as GGUFError  # re-exported: memory imports it from here

MAGIC = b"GGUF"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Per-layer arrays have one entry per block (at most a few hundred); anything
# longer is a tokenizer table or similar that no estimate needs.
MAX_KEPT_ARRAY = 4096
MAX_KEPT_STRING = 4096
MAX_KEY_BYTES = 65535
# Most headers without a tokenizer fit in the first small read; files with one
# are walked in bigger chunks.
_FIRST_CHUNK = 64 * 1024
_CHUNK = 1024 * 1024
_MAX_NESTING = 8


class GGUFType:
    """Value type codes of the GGUF spec (`gguf_type` in ggml)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS: dict[int, str] = {
    GGUFType.UINT8: "B",
    GGUFType.INT8: "b",
    GGUFType.UINT16: "H",
    GGUFType.INT16: "h",
    GGUFType.UINT32: "I",
    GGUFType.INT32: "i",
    GGUFType.FLOAT32: "f",
    GGUFType.BOOL: "?",
    GGUFType.UINT64: "Q",
    GGUFType.INT64: "q",
    GGUFType.FLOAT64: "d",
}
_SCALAR_SIZES: dict[int, int] = {t: struct.calcsize("<" + f) for t, f in _SCALAR_FORMATS.items()}


@dataclass(frozen=True, slots=True)
class SkippedArray:
    """An array we walked over without keeping: its element type and length."""

    item_type: int
    length: int


@dataclass(frozen=True, slots=True)
class SkippedString:
    """A string value too long to be worth keeping (a chat template, a license)."""

    length: int


Scalar = int | float | bool | str
GGUFValue = Scalar | tuple[Scalar, ...] | SkippedArray | SkippedString


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    version: int
    tensor_count: int
    metadata: Mapping[str, GGUFValue]
    # Offset where the tensor infos start: how far into the file we had to read.
    metadata_end: int


def read_gguf_header(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> GGUFHeader:
    """The version, tensor count and metadata of the GGUF file at `path`."""
    try:
        with path.open("rb") as stream:
            return read_gguf_header_from(stream, max_bytes=max_bytes, name=str(path))
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def read_gguf_header_from(
    stream: BinaryIO, *, max_bytes: int = DEFAULT_MAX_BYTES, name: str = "<stream>"
) -> GGUFHeader:
    """Like `read_gguf_header`, from a seekable binary stream positioned anywhere."""
    cursor = _Cursor(stream, max_bytes=max_bytes, name=name)
    try:
        magic = cursor.take(4)
    except GGUFError:
        raise GGUFError(f"{name}: not a GGUF file (shorter than 4 bytes)") from None
    if magic != MAGIC:
        raise GGUFError(f"{name}: not a GGUF file (starts with {magic!r}, expected {MAGIC!r})")
    (version,) = struct.unpack("<I", cursor.take(4))
    if version == 1:
        raise GGUFError(
            f"{name}: GGUF version 1 (from before August 2023) is not supported; "
            "download a current conversion of this model"
        )
    if version not in (2, 3):
        if struct.unpack(">I", struct.pack("<I", version))[0] in (1, 2, 3):
            raise GGUFError(f"{name}: big-endian GGUF files are not supported")
        raise GGUFError(f"{name}: unsupported GGUF version {version} (this reader knows 2 and 3)")
    tensor_count, kv_count = struct.unpack("<QQ", cursor.take(16))
    metadata: dict[str, GGUFValue] = {}
    for _ in range(kv_count):
        key_length = cursor.u64()
        if key_length > MAX_KEY_BYTES:
            raise GGUFError(
                f"{name}: metadata key at byte {cursor.position - 8} claims {key_length} bytes "
                "(corrupt file?)"
            )
        key = cursor.take(key_length).decode("utf-8", errors="replace")
        value_type = cursor.u32()
        metadata[key] = _read_value(cursor, value_type, key, depth=0)
    return GGUFHeader(
        version=version,
        tensor_count=tensor_count,
        metadata=metadata,
        metadata_end=cursor.position,
    )


def _read_value(cursor: _Cursor, value_type: int, key: str, *, depth: int) -> GGUFValue:
    scalar_format = _SCALAR_FORMATS.get(value_type)
    if scalar_format is not None:
        value: Scalar = struct.unpack("<" + scalar_format, cursor.take(_SCALAR_SIZES[value_type]))[
            0
        ]
        return value
    if value_type == GGUFType.STRING:
        length = cursor.u64()
        if length > MAX_KEPT_STRING:
            cursor.skip(length)
            return SkippedString(length)
        return cursor.take(length).decode("utf-8", errors="replace")
    if value_type == GGUFType.ARRAY:
        item_type = cursor.u32()
        count = cursor.u64()
        item_format = _SCALAR_FORMATS.get(item_type)
        if item_format is not None and count <= MAX_KEPT_ARRAY:
            data = cursor.take(count * _SCALAR_SIZES[item_type])
            return tuple(struct.unpack(f"<{count}{item_format}", data))
        _skip_items(cursor, item_type, count, key, depth=depth + 1)
        return SkippedArray(item_type, count)
    raise GGUFError(
        f"{cursor.name}: unknown value type {value_type} for key {key!r} "
        f"at byte {cursor.position - 4} (corrupt file?)"
    )


def _skip_items(cursor: _Cursor, item_type: int, count: int, key: str, *, depth: int) -> None:
    size = _SCALAR_SIZES.get(item_type)
    if size is not None:
        cursor.skip(count * size)
    elif item_type == GGUFType.STRING:
        cursor.skip_strings(count)
    elif item_type == GGUFType.ARRAY:
        if depth > _MAX_NESTING:
            raise GGUFError(f"{cursor.name}: arrays nested deeper than {_MAX_NESTING} in {key!r}")
        for _ in range(count):
            inner_type = cursor.u32()
            inner_count = cursor.u64()
            _skip_items(cursor, inner_type, inner_count, key, depth=depth + 1)
    else:
        raise GGUFError(f"{cursor.name}: unknown array element type {item_type} for key {key!r}")


class _Cursor:
    """Sequential reads over a seekable stream, in chunks, bounded by a byte cap.

    `position` is the absolute offset of the next byte to parse. The buffer holds
    the file bytes from `_buffer_start`; skips past it drop it and the next read
    seeks. No stream read ever asks for bytes at or beyond `max_bytes`.
    """

    def __init__(self, stream: BinaryIO, *, max_bytes: int, name: str) -> None:
        self.name = name
        self._stream = stream
        self._max_bytes = max_bytes
        try:
            self._file_size = stream.seek(0, 2)
        except (OSError, ValueError) as exc:
            raise GGUFError(f"{name}: cannot seek: {exc}") from exc
        self._buffer = b""
        self._buffer_start = 0
        self._chunk = _FIRST_CHUNK
        self.position = 0

    def _check_end(self, end: int) -> None:
        if end > self._file_size:
            raise GGUFError(
                f"{self.name}: file ends at byte {self._file_size} inside the metadata "
                "(truncated download or not a model file?)"
            )
        if end > self._max_bytes:
            raise GGUFError(
                f"{self.name}: metadata runs past {self._max_bytes} bytes, "
                "more than any real model header; refusing to read further"
            )

    def take(self, n: int) -> bytes:
        end = self.position + n
        self._check_end(end)
        offset = self.position - self._buffer_start
        if offset < 0 or end > self._buffer_start + len(self._buffer):
            self._fill(n)
            offset = 0
        self.position = end
        return self._buffer[offset : offset + n]

    def _fill(self, needed: int) -> None:
        want = min(max(needed, self._chunk), self._max_bytes - self.position)
        self._chunk = _CHUNK
        try:
            self._stream.seek(self.position)
            data = self._stream.read(want)
        except (OSError, ValueError) as exc:
            raise GGUFError(f"{self.name}: read failed at byte {self.position}: {exc}") from exc
        if len(data) < needed:
            raise GGUFError(
                f"{self.name}: file ends at byte {self.position + len(data)} inside the metadata "
                "(truncated download?)"
            )
        self._buffer = data
        self._buffer_start = self.position

    def skip(self, n: int) -> None:
        end = self.position + n
        self._check_end(end)
        self.position = end

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack("<Q", self.take(8))[0]
        return value

    def skip_strings(self, count: int) -> None:
        # The hot loop for 150k-entry tokenizer arrays: parse lengths straight out
        # of the buffer instead of going through take() for each one.
        unpack_length = struct.Struct("<Q").unpack_from
        remaining = count
        while remaining:
            offset = self.position - self._buffer_start
            buffer = self._buffer
            limit = len(buffer) - 8
            while remaining and 0 <= offset <= limit:
                (length,) = unpack_length(buffer, offset)
                offset += 8 + length
                remaining -= 1
            self.position = self._buffer_start + offset
            self._check_end(self.position)
            if remaining:
                length = self.u64()
                self.skip(length)
                remaining -= 1
