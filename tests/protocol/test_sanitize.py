"""A device's string in a log line: one printable line, bounded, its escapes told from ours."""

from __future__ import annotations

from protocol.sanitize import printable


def test_control_characters_and_escapes_are_written_as_escapes() -> None:
    assert printable("robot-1") == "robot-1"
    assert printable("a\nb\r\tc\x1b[2J\u202eend\x00") == "a\\nb\\r\\tc\\x1b[2J\\u202eend\\x00"
    assert printable("C:\\n") == "C:\\\\n"  # a backslash the sender wrote is doubled: not one of our escapes
    assert printable(b"ok \xff\n") == "ok \ufffd\\n"
    assert printable("été 東京") == "été 東京"  # printable letters of any script stay as they are


def test_a_long_string_is_cut_and_says_how_long_it_was() -> None:
    shown = printable("x" * 10_000, limit=50)
    assert shown == "x" * 50 + "... (10000 characters, 9950 not shown)"
    shown = printable("\n" * 100, limit=9)
    assert shown.startswith("\\n\\n\\n\\n...") and "100 characters" in shown
