"""Text rules every stage shares (a leaf module: it imports nothing of the project)."""

from __future__ import annotations

import re

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators. None of them
# belongs in a header, a one-line config value or folded feed text: some are line breaks to one
# reader or another (U+0085, U+2028), the rest are invisible or terminal escapes.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A lone surrogate (JSON allows "\ud800") cannot be encoded as UTF-8: it would crash the email.
SURROGATE = re.compile(r"[\ud800-\udfff]")
# Unicode noncharacters (U+FDD0..U+FDEF and the last two code points of every plane: the MJML
# compiler fails the whole run on one) and the bidi overrides and isolates (they make feed text
# display reversed): dropped from feed text.
NONCHAR = re.compile("[\ufdd0-\ufdef\u202a-\u202e\u2066-\u2069"
                     + "".join(f"{chr(p * 0x10000 + 0xfffe)}{chr(p * 0x10000 + 0xffff)}"
                               for p in range(17)) + "]")


def crlf_throughout(data: bytes) -> bool:
    """Every line break a CRLF (what SMTP needs as is)."""
    return data.count(b"\n") == data.count(b"\r\n")
