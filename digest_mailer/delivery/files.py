"""The file backend: each email as .eml and .html under out_dir/<date>/, plus an index.html."""

from __future__ import annotations

import html
import logging
import os
import re
from email import message_from_bytes
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from digest_mailer.delivery import Immediate, Receipt
from digest_mailer.errors import DeliveryError
from digest_mailer.models import OutgoingMessage

logger = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_stem(address: str) -> str:
    return _UNSAFE.sub("_", address.lower().replace("@", "_at_")).strip("._") or "recipient"


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FileBackend(Immediate):
    name = "file"
    dry_run = True

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self._dirs: set[Path] = set()

    def send(self, message: OutgoingMessage) -> Receipt:
        folder = self.out_dir / message.run_date.isoformat()
        stem = file_stem(message.recipient)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / f"{stem}.html", (message.html or html_part(message.data)
                                                   ).encode("utf-8"))
            write_atomic(folder / f"{stem}.eml", message.data)
        except OSError as e:
            raise DeliveryError(f"{folder}: cannot write the preview ({e.strerror})",
                                hint="check --out or delivery.out_dir", fatal=True) from e
        self._dirs.add(folder)
        return Receipt(location=str(folder / f"{stem}.eml"))

    def close(self) -> None:
        for folder in self._dirs:
            write_index(folder)
        self._dirs.clear()


def html_part(data: bytes) -> str:
    """The HTML part of a serialised message (for one re-sent from the outbox)."""
    msg = message_from_bytes(data, policy=default_policy)
    part = msg.get_body(("html",)) if isinstance(msg, EmailMessage) else None
    return str(part.get_content()) if part is not None else ""


def write_index(folder: Path) -> Path:
    """An index of every preview in the folder, this run's and earlier ones of the same date."""
    parser = BytesHeaderParser(policy=default_policy)
    rows = []
    for eml in sorted(folder.glob("*.eml")):
        with eml.open("rb") as f:
            headers = parser.parse(f)
        to = html.escape(str(headers.get("To", "")))
        subject = html.escape(str(headers.get("Subject", "")))
        rows.append(f'<tr><td>{to}</td><td><a href="{html.escape(eml.stem)}.html">{subject}</a>'
                    f'</td><td><a href="{html.escape(eml.name)}">.eml</a></td></tr>')
    page = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>Previews {html.escape(folder.name)}</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#1f2937}"
        "table{border-collapse:collapse}td,th{padding:6px 12px;border-bottom:1px solid #e5e7eb;"
        "text-align:left}</style></head><body>"
        f"<h1>Previews for {html.escape(folder.name)}</h1>"
        f"<p>{len(rows)} email(s). Nothing here was sent.</p>"
        "<table><tr><th>To</th><th>Subject</th><th>Source</th></tr>"
        + "".join(rows) + "</table></body></html>\n")
    path = folder / "index.html"
    write_atomic(path, page.encode("utf-8"))
    logger.info("wrote %s (%d previews)", path, len(rows))
    return path
