"""An image's bytes, read by range: a base64 text is decoded only where the checks look.

Base64 maps every 3 bytes to 4 characters, so bytes ``[a, b)`` are the characters from ``4 * (a // 3)`` to
``4 * ceil(b / 3)``: a header, a PNG chunk boundary or a JPEG's last bytes decode without the rest. A 2 MB
PNG is checked by decoding a few kilobytes; the characters in between are passed on unread, and a stray one
there fails in A1111 (its decoder drops it) rather than here.
"""

from __future__ import annotations

import binascii
import io
from typing import Protocol

from worker.input_images.refusal import refuse


class ImageSource(Protocol):
    """Where the checks read an image from: its size, and any byte range of it."""

    size: int

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``, clipped to the image."""


class BytesSource:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.size = len(raw)

    def read(self, start: int, end: int) -> bytes:
        return self.raw[max(0, start) : max(0, end)]


class Base64Source:
    """A standard base64 text (no whitespace) read by byte range.

    Raises:
        InputInvalid: naming ``where``, when the length or a decoded range is not base64.
    """

    def __init__(self, text: str, where: str) -> None:
        self.text, self.where = text, where
        if len(text) % 4 or not text.isascii():
            shown = text[:20] + ("..." if len(text) > 20 else "")
            raise refuse(
                where,
                f"not base64 ({len(text):,} characters, starting {shown!r}): send the image's bytes as "
                "standard base64",
            )
        padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0  # (rstrip would copy it all)
        self.size = len(text) // 4 * 3 - padding

    def read(self, start: int, end: int) -> bytes:
        start, end = max(0, start), min(end, self.size)
        if start >= end:
            return b""
        first = start // 3
        try:
            chunk = binascii.a2b_base64(self.text[first * 4 : -(-end // 3) * 4], strict_mode=True)
        except binascii.Error as exc:
            raise refuse(
                self.where,
                f"not base64 ({exc} near byte {start:,}): send the image's bytes as standard base64",
            ) from None
        offset = start - first * 3
        return chunk[offset : offset + end - start]


class SourceFile(io.RawIOBase):
    """A seekable file over an ``ImageSource``, for Pillow to read a header from."""

    def __init__(self, source: ImageSource) -> None:
        self._source = source
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._source.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._source.read(self._position, self._position + len(buffer))
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)
