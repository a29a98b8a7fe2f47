"""JSON from a feed, bounded: nothing nested deeper than MAX_DEPTH reaches the decoder (whose
recursion would raise RecursionError), and no integer is long enough to hit Python's
int-string limit (a ValueError past 4,300 digits).

A subtree deeper than MAX_DEPTH is replaced by TOO_DEEP before decoding, so the items beside it
stay readable: the caller skips the item that holds it (see `holds_too_deep`)."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from digest_mailer.errors import SourceError

# The daily papers JSON nests 6 levels at most (data-props > dailyPapers > item > paper >
# authors > author); Python's recursion limit is about 1,000.
MAX_DEPTH: Final = 64
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_CUT_KEY = "\x00digest-mailer: nested too deep"
_MARKER = '{"\\u0000digest-mailer: nested too deep": 0}'


class _TooDeep:
    """Stands where a feed nested arrays or objects deeper than MAX_DEPTH."""

    def __repr__(self) -> str:
        return f"<nested more than {MAX_DEPTH} levels deep>"


TOO_DEEP: Final = _TooDeep()


def _int(text: str) -> int | float:
    # No count or id has 20 digits; longer ones become infinities, which callers clamp.
    if len(text) <= 20:
        return int(text)
    return -math.inf if text.startswith("-") else math.inf


def _pairs(pairs: list[tuple[str, Any]]) -> Any:
    if len(pairs) == 1 and pairs[0][0] == _CUT_KEY:
        return TOO_DEEP
    return dict(pairs)


def _cut(text: str, limit: int) -> str | None:
    """`text` with every subtree that starts deeper than `limit` replaced by the marker, or None
    when nothing is that deep (the common case: one pass of a C regex, no copy)."""
    depth, start, last = 0, -1, 0
    out: list[str] = []
    for m in _TOKEN.finditer(text):
        token = m.group()
        if token == "[" or token == "{":
            depth += 1
            if depth == limit + 1:
                start = m.start()
        elif token == "]" or token == "}":
            if depth == limit + 1:
                out += (text[last:start], _MARKER)
                last = m.end()
            depth = max(depth - 1, 0)
    if depth > limit:  # unterminated: the decoder will refuse what is left
        out += (text[last:start], _MARKER)
        last = len(text)
    if not out:
        return None
    out.append(text[last:])
    return "".join(out)


def loads(data: bytes | str, origin: str, hint: str, *, limit: int = MAX_DEPTH
          ) -> tuple[Any, bool]:
    """The decoded document and whether any part of it was cut for being too deep."""
    # A byte that is not UTF-8 (a Latin-1 title) costs that character, not the whole feed.
    text = data if isinstance(data, str) else data.decode(json.detect_encoding(data), "replace")
    cut = _cut(text, limit)
    try:
        if cut is None:
            return json.loads(text, parse_int=_int), False
        return json.loads(cut, parse_int=_int, object_pairs_hook=_pairs), True
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise SourceError(f"{origin}: not valid JSON ({str(e)[:200]})", hint=hint) from e


def holds_too_deep(value: Any) -> bool:
    """Whether TOO_DEEP sits anywhere in `value` (iterative: no recursion on feed data)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if v is TOO_DEEP:
            return True
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False
