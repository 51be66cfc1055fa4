"""Text a device (or a browser, or the other end of the tunnel) chose, made safe to write into a log line.

A device's string may hold a newline and a forged log line after it, ANSI escapes that recolour or erase the
operator's terminal, or bidi controls that reorder what is shown; or it may simply be very long. ``printable``
keeps it on one line: every character that is not printable is written as its Python escape (``\\n``,
``\\x1b``, ``\\u202e``), and the result is cut to a bound that says how long the original was.
"""

from __future__ import annotations

MAX_LOGGED_CHARS = 200


def _escaped(char: str) -> str:
    if char.isprintable():  # letters, digits, punctuation and the plain space
        return "\\\\" if char == "\\" else char
    return char.encode("unicode_escape").decode("ascii")


def printable(text: str | bytes, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` as one printable line of at most about ``limit`` characters (bytes are read as UTF-8, a bad
    sequence as U+FFFD); a backslash is doubled so that an escape written by the sender cannot pass for ours."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    shown: list[str] = []
    length = 0
    for i, char in enumerate(text):
        part = _escaped(char)
        if length + len(part) > limit:
            return "".join(shown) + f"... ({len(text)} characters, {len(text) - i} not shown)"
        shown.append(part)
        length += len(part)
    return "".join(shown)
