"""What the outbox stores of a digest: a sender loads it and splices the very bytes the run
would have spliced, for any subscriber (the stored form is no second implementation)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from conftest import NOW, SAMPLE
from digest_mailer.message import MessageTemplate, Shared, template_bytes
from digest_mailer.models import Digest, Subscriber
from digest_mailer.render import Renderer
from digest_mailer.select import select
from digest_mailer.sources import FileSource

NAMES = [("Ada", "ada@example.org"), ("Zoë Ørsted", "zoe@example.org"), ("", "x@exämple.org"),
         ("李小龙", "zoë@example.org"), ('Q "quoted", name', "q@example.org")]


def built_template() -> MessageTemplate:
    """The sample feed's digest for one subscriber, as the composer builds it."""
    papers = FileSource("huggingface", SAMPLE).fetch(date(2025, 6, 2)).papers
    sub = Subscriber("ada@example.org", "Ada")
    sel = select(sub, papers, ())
    digest = Digest("Daily Papers", date(2025, 6, 2), sub, sel.matches, sel.over_cap, "u")
    shared = Shared(sender="Daily Papers <papers@example.org>", envelope_from="p@example.org",
                    reply_to=None, list_id="Daily Papers <dp.example.org>",
                    mailto="unsubscribe@example.org", when=NOW, run_date=date(2025, 6, 2))
    return MessageTemplate(Renderer().render_template(digest), shared, set_id=7)


def test_a_stored_template_splices_the_same_bytes(tmp_path: Path) -> None:
    built = built_template()
    shared = built.shared
    loaded = MessageTemplate.from_compiled(built.to_compiled(), set_id=7, signer=None)
    for name, email in NAMES:
        values = {"email": email, "name": name, "token": "tok",
                  "unsubscribe_url": "https://papers.example.org/unsubscribe/tok",
                  "message_id": "<1@example.org>"}
        assert loaded.personalize(**values).data == built.personalize(**values).data
    # A ledger written before the compiled form still loads (the template is built then).
    old = MessageTemplate.from_compiled(template_bytes(built.template, shared), set_id=7,
                                        signer=None)
    assert old.personalize(**values).subject == built.personalize(**values).subject


def test_folds_written_directly_equal_the_email_packages() -> None:
    from digest_mailer.message import POLICY, fold, list_unsubscribe

    def slow(name: str, value: str, raw: bool) -> bytes:
        stored = value if raw else POLICY.header_factory(name, value)
        return POLICY.fold(name, stored).encode("ascii", "surrogateescape")

    token = "t" * 43
    cases = [("Message-ID", "<20250602070000.0123456789abcdef@example.org>", False),
             ("Message-ID", "<20250602070000.0123456789abcdef@" + "x" * 60 + ".org>", False),
             ("Message-ID", "<a b@example.org>", False),
             ("List-Unsubscribe", list_unsubscribe(
                 f"https://papers.example.org/unsubscribe/{token}", "u@example.org", token), True),
             ("List-Unsubscribe", list_unsubscribe("https://p.org/u/t", None, "t"), True),
             ("List-Unsubscribe", "<https://x.org/" + "a" * 200 + ">", True),
             ("List-Unsubscribe", "<https://x.org/\x0bz>", True)]
    for name, value, raw in cases:
        assert fold(name, value, raw=raw) == slow(name, value, raw), (name, value)


def test_a_message_says_it_is_crlf_throughout_only_when_it_is() -> None:
    """The flag spares the SMTP backend a scan of every message; a wrong True would send a
    bare line feed undotted."""
    import json

    from digest_mailer.text import crlf_throughout

    built = built_template()
    stored = json.loads(built.to_compiled())
    # A stored template whose static bytes hold a bare line feed (another writer's, damaged):
    # the messages spliced from it are not vouched for.
    for piece in stored["pieces"]:
        if piece[0] == "":
            piece[1] = piece[1] + "a bare\nline feed\r\n"
            break
    bare = MessageTemplate.from_compiled(json.dumps(stored).encode(), set_id=7, signer=None)
    for name, email in NAMES:
        values = {"email": email, "name": name, "token": "tok",
                  "unsubscribe_url": "https://papers.example.org/unsubscribe/tok",
                  "message_id": "<1@example.org>"}
        good = built.personalize(**values)
        assert good.crlf and crlf_throughout(good.data)
        damaged = bare.personalize(**values)
        assert not damaged.crlf and not crlf_throughout(damaged.data)
