"""Segmentation: boundaries, sizes and UTF-8 (no server needed)."""
import io

import pytest

from longctx._segments import segments


def test_cuts_at_paragraph_line_then_word_boundaries():
    text = "para one is here.\n\npara two goes on and on " * 20
    segs = list(segments(text.splitlines(keepends=True), 64))
    assert "".join(segs) == text
    assert all(len(s.encode()) <= 64 for s in segs)
    assert all(s.endswith(("\n", " ")) for s in segs[:-1])


def test_never_splits_a_utf8_character():
    text = "жёлтый 😀" * 300  # 2- and 4-byte characters
    for source in ([text], io.StringIO(text), io.BytesIO(text.encode())):
        segs = list(segments(source, 37))
        assert "".join(segs) == text
        assert all(0 < len(s.encode()) <= 37 for s in segs)


def test_binary_files_must_be_utf8():
    with pytest.raises(UnicodeDecodeError):
        list(segments(io.BytesIO(b"ok \xff\xfe"), 64))


def test_rejects_tiny_segments():
    with pytest.raises(ValueError):
        list(segments(["abc"], 4))


def test_a_str_is_a_path_and_text_goes_in_a_list():
    with pytest.raises(TypeError, match=r"\[text\]"):
        list(segments("line one\nline two", 64))
    assert list(segments(["line one\nline two"], 64)) == ["line one\nline two"]
