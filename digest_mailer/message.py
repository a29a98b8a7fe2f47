"""One subscriber's email: headers built with the email package, serialised with CRLF."""

from __future__ import annotations

import base64
import functools
import hmac
import json
import os
import re
from dataclasses import dataclass
from datetime import date, datetime
from email import policy, quoprimime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from email.utils import quote as quote_string
from typing import Any
from urllib.parse import quote

from digest_mailer.errors import DigestMailerError, RenderError
from digest_mailer.marks import DigestTemplate, Marks, one_line
from digest_mailer.models import OutgoingMessage, RenderedDigest, Subscriber
from digest_mailer.text import crlf_throughout

# SMTP policy: CRLF line ends, headers folded at 78. Raw headers set with `set_raw` are kept as
# given, which is how List-Unsubscribe stays out of an encoded word (RFC 8058 clients need the
# URL as is).
POLICY = policy.SMTP.clone(refold_source="none")
_MAX_LINE: int = POLICY.max_line_length or 78
_SLUG = re.compile(r"[^a-z0-9]+")


def unsubscribe_token(secret: bytes, email: str, list_id_header: str | None = None) -> str:
    """HMAC-SHA256 over the list's id and the lower-cased address: reveals nothing, cannot be
    forged, and works for this list only, even when lists share the secret. Without a list
    (`list_id_header` None) it is the legacy form, over the address alone, that links sent
    before tokens were bound to a list carry."""
    what = email.lower()
    if list_id_header is not None:
        what = f"{list_ident(list_id_header)}\n{what}"
    digest = hmac.digest(secret, what.encode("utf-8"), "sha256")
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def list_ident(list_id_header: str) -> str:
    """The id inside a List-Id header (`Name <id>` -> `id`): renaming the list keeps it."""
    inside = list_id_header.rpartition("<")[2].partition(">")[0]
    return (inside or list_id_header).lower()



def list_unsubscribe(url: str, mailto: str | None, token: str) -> str:
    """`<https://...>, <mailto:...>`; folded between the two URIs, never inside one."""
    uris = [f"<{url}>"]
    if mailto:
        uris.append(f"<mailto:{mailto}?subject={quote('unsubscribe ' + token)}>")
    return ",\r\n ".join(uris) if sum(map(len, uris)) > 60 else ", ".join(uris)


def make_message_id(domain: str, when: datetime) -> str:
    """One Message-ID; a run's many come from one MessageIds."""
    return MessageIds(domain, when)()


class MessageIds:
    """Message-IDs for the messages of one run: 64 random bits each, from the system's
    random source read 4 KB at a time (one read per id was a tenth of the composer's time
    outside rendering at 10,000 subscribers)."""

    _CHUNK = 4096

    def __init__(self, domain: str, when: datetime) -> None:
        self.domain, self.when = domain, when
        self._prefix = f"<{when:%Y%m%d%H%M%S}."
        self._suffix = f"@{domain}>"
        self._pool = b""
        self._at = 0

    def __call__(self) -> str:
        if self._at + 8 > len(self._pool):
            self._pool, self._at = os.urandom(self._CHUNK), 0
        raw = self._pool[self._at:self._at + 8]
        self._at += 8
        return f"{self._prefix}{raw.hex()}{self._suffix}"


def list_id(newsletter: str, domain: str, explicit: str | None) -> str:
    ident = explicit or f"{_SLUG.sub('-', newsletter.lower()).strip('-') or 'digest'}.{domain}"
    return f"{newsletter} <{ident}>"


# Signed when present: what a receiver shows, threads by, or acts on for an unsubscribe.
DKIM_HEADERS = (b"From", b"To", b"Subject", b"Date", b"Message-ID", b"Reply-To", b"List-Id",
                b"List-Unsubscribe", b"List-Unsubscribe-Post", b"MIME-Version", b"Content-Type")


@dataclass(frozen=True, slots=True)
class DkimSigner:
    domain: str
    selector: str
    key: bytes  # PEM

    def sign(self, data: bytes) -> bytes:
        import dkim  # only operators who sign pay for the import

        try:
            header = dkim.sign(data, self.selector.encode(), self.domain.encode(), self.key,
                               include_headers=list(DKIM_HEADERS))
        except dkim.DKIMException as e:
            raise DigestMailerError(f"DKIM signing failed: {e}",
                                    hint="check delivery.dkim.key_file") from e
        return bytes(header) + data


# Headers of a message whose address has a UTF-8 local part (RFC 6532): it only goes out over
# SMTPUTF8, where header values are UTF-8 as they are.
_UTF8 = POLICY.clone(utf8=True)


def ascii_domain(email: str) -> str:
    """The address with an internationalised domain as IDNA (punycode), which every server
    and client takes; the local part as it is."""
    local, at, domain = email.rpartition("@")
    if not at or domain.isascii():
        return email
    import idna

    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return email  # the config refuses such a domain; the sender says why it cannot go


def build_message(rendered: RenderedDigest, *, subscriber: Subscriber, sender: str,
                  envelope_from: str, reply_to: str | None, list_id_header: str,
                  unsubscribe: str, message_id: str, when: datetime, run_date: date,
                  signer: DkimSigner | None = None) -> OutgoingMessage:
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    email = ascii_domain(subscriber.email)
    utf8_probe = None if email.isascii() else Address(display_name=subscriber.name,
                                                      addr_spec="probe@example.invalid")
    msg["To"] = utf8_probe or Address(display_name=subscriber.name, addr_spec=email)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg.set_raw("Subject", subject_field(rendered.subject)[len(b"Subject: "):-2].decode("ascii"))
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    msg["List-Id"] = list_id_header
    msg.set_raw("List-Unsubscribe", unsubscribe)
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for part in msg.iter_parts():
        del part["MIME-Version"]  # the email package repeats it on converted parts
    data = msg.as_bytes(policy=POLICY)
    if utf8_probe is not None:
        data = data.replace(fold("To", utf8_probe), to_header(subscriber.name, email), 1)
    return OutgoingMessage(
        recipient=subscriber.email,
        envelope_from=envelope_from or parseaddr(sender)[1],
        message_id=message_id,
        subject=rendered.subject,
        data=signer.sign(data) if signer else data,
        html=rendered.html,
        run_date=run_date,
    )


_PLAIN_MSGID = re.compile(r"<[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+>")


def fold(name: str, value: object, *, raw: bool = False) -> bytes:
    """One header exactly as the email package writes it: through the header registry, or
    as given for a raw header (set_raw). Two shapes every message has are written directly,
    as the email package would (its folding is half the cost of a splice): a raw header of
    printable ASCII lines, which it joins with CRLF as they are, and a plain Message-ID that
    fits on its line."""
    if isinstance(value, str) and value.isascii() and not value.endswith("\n"):
        if raw and value.replace("\r\n", "").isprintable():
            return f"{name}: {value}\r\n".encode("ascii")
        if (name == "Message-ID" and _PLAIN_MSGID.fullmatch(value)
                and len(name) + 2 + len(value) <= _MAX_LINE):
            return f"{name}: {value}\r\n".encode("ascii")
    stored: Any = value if raw else POLICY.header_factory(name, value)
    folded: str = POLICY.fold(name, stored)
    return folded.encode("ascii", "surrogateescape")


def subject_field(subject: str) -> bytes:
    """The Subject header as the email package folds it, except that it never folds right
    after `Subject:` (it does when the whole value fits the next line): that leaves the value
    starting with a space for every parser. A subject that is not ASCII is encoded by
    email.header.Header, which keeps each space inside an encoded word: the policy's folder
    puts some between encoded words, where RFC 2047 says to ignore them ("李 Zoë" read as
    "李Zoë")."""
    if not subject:
        return b"Subject: \r\n"  # as build_message writes it (the folder drops the space)
    if not subject.isascii():
        return ("Subject: " + Header(subject, "utf-8", header_name="Subject").encode(
            linesep="\r\n") + "\r\n").encode("ascii")
    folded = fold("Subject", subject)
    head = b"Subject:\r\n "
    return b"Subject: " + folded[len(head):] if folded.startswith(head) else folded


_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.+_-]+@[A-Za-z0-9.-]+")


def to_header(name: str, email: str) -> bytes:
    """The To header, as fold() writes it, without its cost for the common cases: a plain
    name (or none) as is; any other name folded once and reused for addresses of the same
    shape, since folding sees an address only as a whole word of its length. A domain goes
    as IDNA; a UTF-8 local part as UTF-8 (RFC 6532: the message then needs SMTPUTF8)."""
    email = ascii_domain(email)
    if not email.isascii():
        value = f'"{quote_string(name)}" <{email}>' if name else email
        line: str = _UTF8.fold("To", _UTF8.header_factory("To", value))
        return line.encode("utf-8")
    if _PLAIN_ADDRESS.fullmatch(email):
        line = f"To: {name} <{email}>" if name else f"To: {email}"
        if (not name or _PLAIN_NAME.fullmatch(name)) and len(line) <= _MAX_LINE:
            return line.encode("ascii") + b"\r\n"
        local, _, domain = email.partition("@")
        folded, stand_in = _to_shape(name, len(local), len(domain))
        if folded.count(stand_in) == 1:
            return folded.replace(stand_in, email.encode("ascii"))
    return fold("To", Address(display_name=name, addr_spec=email))


@functools.lru_cache(maxsize=4096)
def _to_shape(name: str, local: int, domain: int) -> tuple[bytes, bytes]:
    if domain < 4:
        return b"", b"-"  # no shape to stand in for: the caller folds this one itself
    stand_in = "q" * local + "@" + "q" * (domain - 3) + ".qq"
    return fold("To", Address(display_name=name, addr_spec=stand_in)), stand_in.encode()


def _qp_line(line: str) -> bytes:
    """One source line, quoted-printable, as the email package encodes it within a body: its
    encoder works line by line, so encoding lines apart gives the same bytes."""
    raw = line.encode("utf-8").decode("latin-1")
    return quoprimime.body_encode(raw + "\n", _MAX_LINE).replace(
        "\n", "\r\n").encode("ascii")


def _qp_lines(lines: list[str]) -> bytes:
    """Source lines, quoted-printable, as the email package encodes a body made of them (it
    splits the body into lines first, so a trailing empty line is a line of its own)."""
    body = ("\n".join(lines) + "\n").encode("utf-8").decode("latin-1")
    return quoprimime.body_encode(body, _MAX_LINE).replace("\n", "\r\n").encode("ascii")


Piece = bytes | tuple[str, str]  # static bytes, or (part, source line) filled per subscriber
_DYNAMIC = ("To", "Subject", "Message-ID", "List-Unsubscribe")


@dataclass(frozen=True, slots=True)
class Shared:
    """The parts of every message of a run that no digest or subscriber changes."""

    sender: str
    envelope_from: str
    reply_to: str | None
    list_id: str
    mailto: str | None
    when: datetime
    run_date: date
    signer: DkimSigner | None = None


_PROBE_SUBJECT = "Probe"


@dataclass(frozen=True, slots=True)
class Frame:
    """The headers and MIME frame every digest of a run shares, laid out once by the email
    package around stand-in bodies (building it per digest was a fifth of a digest's cost).
    Only the Subject differs between digests; it is written as build_message writes it."""

    name_mark: str
    head: tuple[tuple[str, bytes], ...]  # each field by name, folded, with its CRLF
    body: bytes

    def stand_in(self, part: str) -> str:
        return f"{self.name_mark}{part}"

    @classmethod
    def of(cls, shared: Shared, name_mark: str) -> Frame:
        probe = build_message(
            RenderedDigest(subject=_PROBE_SUBJECT, html=f"{name_mark}html",
                           text=f"{name_mark}text"),
            subscriber=Subscriber(email="probe@example.invalid", name=name_mark),
            sender=shared.sender, envelope_from=shared.envelope_from,
            reply_to=shared.reply_to, list_id_header=shared.list_id,
            unsubscribe="<probe>", message_id="<probe@example.invalid>", when=shared.when,
            run_date=shared.run_date).data
        head, body = probe.split(b"\r\n\r\n", 1)
        fields = tuple((field.split(b":", 1)[0].decode("ascii"), field + b"\r\n")
                       for field in re.split(rb"\r\n(?![ \t])", head))
        if ("Subject", subject_field(_PROBE_SUBJECT)) not in fields:
            raise RenderError("could not splice the digest template (the email package "
                              "changed how it writes headers?)")
        return cls(name_mark, fields, body)


class MessageTemplate:
    """A digest template serialised once; each subscriber's message is spliced from it: their
    To, Subject, Message-ID and List-Unsubscribe headers, and the few body lines that hold their
    name, address or link, re-encoded. The bytes equal build_message's for the same values
    (the MIME boundary aside), which the tests check."""

    def __init__(self, template: DigestTemplate, shared: Shared, *, set_id: int | None = None,
                 frame: Frame | None = None) -> None:
        """`frame`: the run's Frame for these marks, when the caller keeps one (else built)."""
        self.template = template
        self.shared = shared
        self.set_id = set_id
        marks = template.marks
        if frame is None or frame.name_mark != marks.name:
            frame = Frame.of(shared, marks.name)
        self.frame = frame
        self._subject_static = not any(m in template.subject for m in marks.all())
        every = marks.every()
        # One scan per line for all twelve marks (testing each took a third of this build).
        marked = re.compile("|".join(map(re.escape, every))).search
        self._head: list[tuple[str, bytes]] = [
            (name, (subject_field(one_line(template.subject)) if self._subject_static else b"")
             if name == "Subject" else b"" if name in _DYNAMIC else line)
            for name, line in frame.head]
        self._pieces: list[Piece] = []
        rest = b"\r\n" + frame.body
        for part, text in (("text", template.text), ("html", template.html)):
            encoded = _qp_lines([frame.stand_in(part)])
            at = rest.find(encoded)
            if at < 0 or not text:
                raise RenderError("could not splice the digest template (the email package "
                                  "changed how it encodes?)")
            self._static(rest[:at])
            run: list[str] = []  # static lines, encoded together
            for line in text.encode("utf-8").splitlines():
                source = line.decode("utf-8")
                if marked(source):
                    if run:
                        self._static(_qp_lines(run))
                        run = []
                    self._pieces.append((part, source))
                else:
                    run.append(source)
            if run:
                self._static(_qp_lines(run))
            rest = rest[at + len(encoded):]
        self._static(rest)
        self._checked()

    def _static(self, chunk: bytes) -> None:
        if self._pieces and isinstance(self._pieces[-1], bytes):
            self._pieces[-1] += chunk
        else:
            self._pieces.append(chunk)

    def personalize(self, *, email: str, name: str, unsubscribe_url: str, token: str,
                    message_id: str, want_html: bool = False) -> OutgoingMessage:
        t = self.template
        subject = one_line(t.subject) if self._subject_static else t.fill_subject(
            name, email, unsubscribe_url)
        dynamic = {
            "To": lambda: to_header(name, email),
            "Subject": lambda: subject_field(subject),
            "Message-ID": lambda: fold("Message-ID", message_id),
            "List-Unsubscribe": lambda: fold(
                "List-Unsubscribe", list_unsubscribe(unsubscribe_url, self.shared.mailto, token),
                raw=True),
        }
        out: list[bytes] = []
        made: list[bytes] = []  # the subscriber's pieces: the static ones were checked once
        for field, line in self._head:
            if not line:
                line = dynamic[field]()
                made.append(line)
            out.append(line)
        for piece in self._pieces:
            if isinstance(piece, bytes):
                out.append(piece)
                continue
            fill = t.fill_html if piece[0] == "html" else t.fill_text
            made.append(_qp_line(fill(piece[1], name, email, unsubscribe_url)))
            out.append(made[-1])
        data = b"".join(out)
        shared = self.shared
        crlf = self._crlf and all(map(crlf_throughout, made))
        if shared.signer:
            signed = shared.signer.sign(data)
            crlf = crlf and crlf_throughout(signed[:len(signed) - len(data)])
            data = signed
        return OutgoingMessage(
            recipient=email, envelope_from=shared.envelope_from, message_id=message_id,
            subject=subject, data=data,
            html=t.fill_html(t.html, name, email, unsubscribe_url) if want_html else "",
            run_date=shared.run_date, set_id=self.set_id, name=name,
            unsubscribe_url=unsubscribe_url, token=token, crlf=crlf)

    def _checked(self) -> None:
        """Whether the template's own bytes are CRLF throughout (once, not per message)."""
        self._crlf = all(crlf_throughout(line) for _, line in self._head) and all(
            crlf_throughout(p) for p in self._pieces if isinstance(p, bytes))

    def to_bytes(self) -> bytes:
        """What the outbox stores to rebuild this template after a crash (the key aside)."""
        return template_bytes(self.template, self.shared)

    def to_compiled(self) -> bytes:
        """The template with its splice points worked out: what the outbox stores, so a sender
        loads it instead of building it again (bytes kept as latin-1 text in JSON)."""
        return json.dumps({
            "template": template_fields(self.template, self.shared),
            "subject_static": self._subject_static,
            "head": [[name, line.decode("latin-1")] for name, line in self._head],
            "pieces": [["", p.decode("latin-1")] if isinstance(p, bytes) else list(p)
                       for p in self._pieces]}).encode("utf-8")

    @classmethod
    def from_compiled(cls, data: bytes, *, set_id: int, signer: DkimSigner | None
                      ) -> MessageTemplate:
        d = json.loads(data)
        if "head" not in d:  # stored by to_bytes (an older ledger): build it
            return cls.from_bytes(data, set_id=set_id, signer=signer)
        base = cls.from_bytes(b"{}", set_id=set_id, signer=signer, parsed=d["template"],
                              build=False)
        base._subject_static = bool(d["subject_static"])
        base._head = [(name, line.encode("latin-1")) for name, line in d["head"]]
        base._pieces = [p[1].encode("latin-1") if p[0] == "" else (p[0], p[1])
                        for p in d["pieces"]]
        base._checked()
        return base

    @classmethod
    def from_bytes(cls, data: bytes, *, set_id: int, signer: DkimSigner | None,
                   parsed: dict[str, Any] | None = None, build: bool = True
                   ) -> MessageTemplate:
        d = parsed if parsed is not None else json.loads(data)
        template = DigestTemplate(subject=d["subject"], html=d["html"], text=d["text"],
                                  marks=Marks(*d["marks"]))
        shared = Shared(sender=d["sender"], envelope_from=d["envelope_from"],
                        reply_to=d["reply_to"], list_id=d["list_id"], mailto=d["mailto"],
                        when=datetime.fromisoformat(d["when"]),
                        run_date=date.fromisoformat(d["run_date"]), signer=signer)
        if not build:
            made = cls.__new__(cls)
            made.template, made.shared, made.set_id = template, shared, set_id
            return made
        return cls(template, shared, set_id=set_id)


def template_fields(template: DigestTemplate, shared: Shared) -> dict[str, Any]:
    t, s = template, shared
    return {
        "subject": t.subject, "html": t.html, "text": t.text, "marks": list(t.marks.all()),
        "sender": s.sender, "envelope_from": s.envelope_from, "reply_to": s.reply_to,
        "list_id": s.list_id, "mailto": s.mailto, "when": s.when.isoformat(),
        "run_date": s.run_date.isoformat()}


def template_bytes(template: DigestTemplate, shared: Shared) -> bytes:
    """What the outbox stores of a digest template; a sender builds the MessageTemplate."""
    return json.dumps(template_fields(template, shared)).encode("utf-8")
