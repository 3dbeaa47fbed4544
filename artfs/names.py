"""Names in output: quoting for line-oriented text and lossless JSON (DESIGN.md §4).

Names are bytes.  A line of output shows a name as it is when it is printable
UTF-8 without a backslash or double quote; otherwise as a C-quoted string the
way git does (``"caf\\351.txt"``, ``"a\\nb"``), so a name can never forge a
line, a column or a terminal escape sequence.  JSON carries a lossy ``path``
and, when the bytes are not plain UTF-8, the exact bytes as ``path_b64``.
"""
from __future__ import annotations

import base64

_ESCAPES = {"\a": "\\a", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\v": "\\v", "\f": "\\f", "\r": "\\r",
            '"': '\\"', "\\": "\\\\"}


def _as_bytes(p: "str | bytes") -> bytes:
    return p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape")


def needs_quoting(b: bytes) -> bool:
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return not s.isprintable() or '"' in s or "\\" in s


def quote(p: "str | bytes") -> str:
    """A name or path for a line of output (see module doc)."""
    b = _as_bytes(p)
    if not needs_quoting(b):
        return b.decode("utf-8")
    out = []
    for ch in b.decode("utf-8", "surrogateescape"):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif "\udc80" <= ch <= "\udcff":  # a byte that is not UTF-8
            out.append("\\%03o" % (ord(ch) - 0xDC00))
        elif not ch.isprintable():
            out.append("".join("\\%03o" % x for x in ch.encode("utf-8")))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def quote_text(s: str) -> str:
    """Free text from a store (messages, ids, labels) for one line: control characters escaped."""
    if s.isprintable():
        return s
    return "".join(_ESCAPES.get(ch, ch) if ch in "\a\b\t\n\v\f\r" else
                   (ch if ch.isprintable() else "".join("\\%03o" % x for x in ch.encode("utf-8", "surrogateescape")))
                   for ch in s)


def text(p: "str | bytes | None") -> "str | None":
    """Lossy text of a name for JSON (invalid bytes become U+FFFD)."""
    if p is None:
        return None
    return _as_bytes(p).decode("utf-8", "replace")


def json_path(p: "str | bytes", key: str = "path") -> dict:
    """``{key: lossy text}`` plus ``{key}_b64`` with the exact bytes when they are not UTF-8."""
    b = _as_bytes(p)
    out = {key: b.decode("utf-8", "replace")}
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b64"] = base64.b64encode(b).decode()
    return out


_UNESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


def unquote(s: str) -> bytes:
    """The bytes of a name as :func:`quote` printed it."""
    if not (len(s) >= 2 and s.startswith('"') and s.endswith('"')):
        return s.encode("utf-8", "surrogateescape")
    body, out, i = s[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
        elif body[i + 1:i + 4].isdigit() and len(body[i + 1:i + 4]) == 3:
            out.append(int(body[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(_UNESCAPES[body[i + 1]])
            i += 2
    return bytes(out)
