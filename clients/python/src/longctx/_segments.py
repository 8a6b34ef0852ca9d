"""Cuts a text stream into Ingest segments.

Segments are tokenized separately by the server, so they end at a paragraph,
line or word boundary where one lies in the last three quarters of the
segment, and never inside a UTF-8 character (docs/service.md "Ingest"), as the
C++ client does.
"""
from __future__ import annotations

import codecs
import io
import os
from typing import BinaryIO, Iterable, Iterator, TextIO, Union

#: What Session.ingest reads: a path (str or PathLike), an open file (text, or
#: binary UTF-8), or an iterable of str pieces of one text (concatenated, then
#: cut; a text in one piece is [text]).
Source = Union[str, "os.PathLike[str]", TextIO, BinaryIO, Iterable[str]]

_READ_CHARS = 1 << 16


def _cut(text: str, max_bytes: int) -> int:
    """Characters of `text` (longer than max_bytes in UTF-8) that make the next
    segment: up to max_bytes bytes, ending after the last separator in the
    window's last three quarters, else at a character boundary."""
    # The first max_bytes bytes lie within the first max_bytes characters.
    window = text[:max_bytes].encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
    floor = len(window) // 4
    for sep in ("\n\n", "\n", " "):
        at = window.rfind(sep)
        if at >= floor and at != -1:
            return at + len(sep)
    return max(len(window), 1)


def _pieces(source: Source) -> Iterator[str]:
    """The text of `source` as str pieces, read lazily."""
    if isinstance(source, str) and ("\n" in source or len(source) > 4096):
        # A str is a path; text itself goes in a list.
        raise TypeError("ingest(str) reads the file of that name: pass text as [text]")
    if isinstance(source, (str, os.PathLike)):
        with open(source, "r", encoding="utf-8", newline="") as f:
            yield from _pieces(f)
        return
    read = getattr(source, "read", None)
    if read is None:
        yield from source  # type: ignore[misc]
        return
    decoder = None
    if not isinstance(source, io.TextIOBase):
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
    while True:
        chunk = read(_READ_CHARS)
        if not chunk:
            break
        if isinstance(chunk, bytes):
            if decoder is None:
                decoder = codecs.getincrementaldecoder("utf-8")("strict")
            yield decoder.decode(chunk)
        else:
            yield chunk
    if decoder is not None:
        yield decoder.decode(b"", final=True)


def segments(source: Source, max_bytes: int) -> Iterator[str]:
    """Non-empty segments of at most max_bytes UTF-8 bytes (a single character
    longer than that stays whole) whose concatenation is the source's text."""
    if max_bytes < 8:
        raise ValueError("segment_bytes must be at least 8")
    buf = ""
    for piece in _pieces(source):
        if not isinstance(piece, str):
            raise TypeError(f"ingest reads text: got a piece of type {type(piece).__name__}")
        buf += piece
        while len(buf) > max_bytes or len(buf.encode("utf-8")) > max_bytes:
            n = _cut(buf, max_bytes)
            yield buf[:n]
            buf = buf[n:]
    if buf:
        yield buf
