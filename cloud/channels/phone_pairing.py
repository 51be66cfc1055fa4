"""Pairing a phone: one-time pairing tokens, and the pairing URL drawn as a QR code for a terminal."""

from __future__ import annotations

import secrets

PAIR_PREFIX = "pair_"
QR_BORDER = 2  # light modules around the code (its quiet zone)
QR_BLOCKS = " ▀▄█"  # two modules a character: (upper light, lower light) -> " ", "▀", "▄", "█"


def new_pairing_token() -> str:
    return PAIR_PREFIX + secrets.token_urlsafe(16)


def is_pairing_token(offered: str, current: str) -> bool:
    """Whether ``offered`` is the current pairing token (compared in constant time)."""
    return secrets.compare_digest(offered.encode(), current.encode())


def qr_modules(url: str) -> list[list[bool]]:
    """The QR code of ``url`` (qrcode's smallest version that fits, error correction M), True = dark module."""
    import qrcode

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
    qr.add_data(url)
    qr.make(fit=True)
    return [[bool(m) for m in row] for row in qr.get_matrix()]


def pairing_qr(url: str) -> str:
    """``url`` as a QR code in text, two module rows a line with half blocks, drawn light-on-dark for a dark
    terminal: a dark module is a blank, a light one (and the quiet zone) is block glyph."""
    modules = qr_modules(url)
    size = len(modules) + 2 * QR_BORDER

    def light(row: int, col: int) -> int:
        row, col = row - QR_BORDER, col - QR_BORDER
        inside = 0 <= row < len(modules) and 0 <= col < len(modules)
        return 0 if inside and modules[row][col] else 1

    def cell(row: int, col: int) -> str:  # past the last row (an odd count) is quiet zone too
        return QR_BLOCKS[light(row, col) | light(row + 1, col) << 1]

    return "\n".join("".join(cell(row, col) for col in range(size)) for row in range(0, size, 2))
