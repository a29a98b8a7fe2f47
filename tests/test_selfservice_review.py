"""A second look at self-service, as a hostile user: links replayed after an unsubscribe or a
removal, one mailbox signed up under many spellings, an IPv6 client's many addresses, and
spreadsheet formulas in an export. Each test failed before its fix."""

from __future__ import annotations

import csv
import io
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from test_signup import LIST_ID, Site, sign_up, site, stored_emails

from conftest import SECRET
from digest_mailer.config import load_config
from digest_mailer.message import unsubscribe_token
from digest_mailer.store import Ledger
from digest_mailer.store.selfservice import SelfService, StoredSubscriber
from digest_mailer.subscriber_csv import read_rows, write_rows

__all__ = ["site"]


def suppressed(site: Site, email: str) -> str | None:
    with Ledger.open_readonly(load_config(site.path).state_path) as ledger:
        return ledger.suppressed(email)


def test_an_old_confirmation_link_never_undoes_an_unsubscribe(site: Site) -> None:
    sign_up(site, "gone@example.org")
    (link,) = site.confirmations()
    path = link.removeprefix(site.base)
    assert "You are subscribed" in site.client.get(path).text
    token = unsubscribe_token(SECRET.encode(), "gone@example.org", LIST_ID)
    site.client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert suppressed(site, "gone@example.org") == "unsubscribed"
    # A scanner re-checking the old email (no cookie, no Fetch Metadata), and the person's
    # own browser opening it again: neither subscribes them again.
    with httpx.Client(base_url=site.base) as scanner:
        again = scanner.get(path)
    assert again.status_code == 200 and "You are subscribed" not in again.text
    assert "You are subscribed" not in site.client.get(path).text
    assert suppressed(site, "gone@example.org") == "unsubscribed"


def test_an_old_confirmation_link_never_brings_back_a_removed_subscriber(site: Site) -> None:
    sign_up(site, "removed@example.org")
    (link,) = site.confirmations()
    path = link.removeprefix(site.base)
    site.client.get(path)
    with SelfService.at(load_config(site.path).state_path) as store:
        assert store.remove("removed@example.org")  # the operator's `remove --store`
    site.client.get(path)
    assert stored_emails(site) == set()


def test_one_mailbox_under_many_spellings_is_one_address_for_the_limits(site: Site) -> None:
    spellings = [f"victim+{n}@example.org" for n in range(8)] + [
        "VICTIM@example.org", "Victim+x@EXAMPLE.ORG"]
    for n, email in enumerate(spellings):
        sign_up(site, email, headers={"X-Forwarded-For": f"198.51.100.{n}"})
    assert len(site.confirmations()) <= 5  # the per-address limit, whatever the tag or case


def test_an_ipv6_client_cannot_spread_sign_ups_over_its_own_prefix(site: Site) -> None:
    for n in range(15):
        sign_up(site, f"v6-{n}@example.org", headers={"X-Forwarded-For": f"2001:db8::{n:x}"})
    assert len(site.confirmations()) == 10  # one /64 is one network for the per-IP limit


def test_an_export_holds_no_spreadsheet_formula_and_reads_back_the_same(tmp_path: Path
                                                                         ) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    hostile = StoredSubscriber("=cmd@example.org", "store", "import",
                               name='=HYPERLINK("http://evil.example","x")',
                               topics=("+rag", "-free", "@home", "\tTab"), created_at=now)
    out = io.StringIO()
    write_rows([hostile], out)
    cells = [c for row in csv.reader(io.StringIO(out.getvalue())) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], cells
    path = tmp_path / "export.csv"
    path.write_text(out.getvalue(), encoding="utf-8")
    ((_line, back),) = read_rows(path)
    assert (back.email, back.name, back.topics) == (hostile.email, hostile.name,
                                                    ("+rag", "-free", "@home", "Tab"))


def race_first_writes(store: SelfService, workers: int = 8, rounds: int = 5) -> None:
    """Many connections writing the same new key at once (a subscriber, a sign-up, a rate
    limit counter): none fails, one confirmation email per address, no hit or revision lost."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    errors: list[BaseException] = []
    mails: list[bool] = []
    allowed: list[bool] = []
    before = store.revision()
    for round_ in range(rounds):
        barrier = threading.Barrier(workers)

        def one(n: int, round_: int = round_, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait(30)
                store.put(StoredSubscriber(f"race{round_}@example.org", "store", "cli",
                                           topics=(f"t{n}",)), now)
                mails.append(store.request(f"pending{round_}@example.org", {}, f"n{n}", now,
                                           timedelta(hours=1))[1])
                allowed.append(store.hit("race", f"subject{round_}", limit=3, window=3600,
                                         now=1000.0))
            except BaseException as e:  # every failure is the finding
                errors.append(e)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []
    assert mails.count(True) == rounds  # one confirmation email per address
    assert allowed.count(True) == rounds * 3  # the limit holds: no hit lost
    assert store.revision() - before == rounds * workers  # no bump lost either


def test_a_csv_row_is_named_by_the_line_it_starts_on(tmp_path: Path) -> None:
    """A quoted cell may hold line breaks (a spreadsheet's multi-line cell): the row is the
    line it starts on, as an editor shows it, and the rows after it are counted right."""
    import pytest

    from digest_mailer.errors import DigestMailerError

    data = tmp_path / "hostile.csv"
    data.write_bytes(b'\xef\xbb\xbfemail,name\r\nok@example.org,Ok\r\nb@example.org,"two\r\n'
                     b'lines"\r\nok@example.org,again\r\n')
    with pytest.raises(DigestMailerError) as caught:
        read_rows(data)
    problems = getattr(caught.value, "problems", ())
    assert problems[0].startswith(f"{data}: line 3: name: ")
    assert problems[1] == f"{data}: line 5: ok@example.org is already on line 2"


def test_blank_lines_do_not_shift_the_line_numbers(tmp_path: Path) -> None:
    import pytest

    from digest_mailer.errors import DigestMailerError

    data = tmp_path / "blank.csv"
    data.write_text("email\n\nok@example.org\n\n\nnot-an-address\n", encoding="utf-8")
    with pytest.raises(DigestMailerError) as caught:
        read_rows(data)
    assert getattr(caught.value, "problems", ())[0].startswith(f"{data}: line 6: email: ")


def test_a_spoofed_forwarded_for_does_not_escape_the_per_ip_limit(site: Site) -> None:
    """Behind a proxy that appends the client's address (nginx's
    $proxy_add_x_forwarded_for), a client's own X-Forwarded-For comes first: the address
    used is the last one not of a trusted proxy, so a new spoofed value each time changes
    nothing."""
    answers = [sign_up(site, f"spoof{n}@example.org",
                       headers={"X-Forwarded-For": f"203.0.113.{n}, 198.51.100.77"})
               for n in range(11)]
    assert [a.status_code for a in answers] == [200] * 10 + [429]
    assert len(site.confirmations()) == 10


def test_old_rate_limit_windows_are_cleared(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from digest_mailer.store.selfservice import rate_limits

    with SelfService.at(tmp_path / "ledger.db") as store:
        for n in range(3):
            assert store.hit("b", f"old{n}", limit=5, window=60, now=1000.0)
        assert store.hit("b", "new", limit=5, window=60, now=1000.0 + 120)
        with store.engine.connect() as conn:
            left = {r.subject for r in conn.execute(sa.select(rate_limits.c.subject))}
    assert left == {"new"}
