from __future__ import annotations

from datetime import date

import pytest

from digest_mailer.models import Paper, ReasonKind, Subscriber
from digest_mailer.select import Drop, Feed, Filter, select, term_matches


def paper(pid: str, title: str = "A paper", abstract: str = "", upvotes: int = 0,
          day: date | None = None, authors: tuple[str, ...] = (),
          keywords: tuple[str, ...] = ()) -> Paper:
    return Paper(id=pid, title=title, abstract=abstract, upvotes=upvotes, listed_on=day,
                 authors=authors, ai_keywords=keywords)


def sub(**kw: object) -> Subscriber:
    return Subscriber(email="ada@example.org", **kw)  # type: ignore[arg-type]


def test_whole_words_and_phrases_any_case() -> None:
    assert term_matches("flow", "a Normalizing FLOW model")
    assert not term_matches("flow", "integer overflow")
    assert not term_matches("flow", "workflows")
    assert term_matches("large language model", "Large-Language Model")
    assert term_matches("large language model", "large\n language  model")
    assert term_matches("C++", "code in C++ is fast")


def test_topics_match_title_abstract_and_keywords_with_reasons() -> None:
    papers = [paper("1", title="Diffusion for video"),
              paper("2", abstract="we use a normalizing flow"),
              paper("3", keywords=("diffusion models", "flow")),
              paper("4", title="Overflow in integer kernels")]
    s = select(sub(topics=("diffusion", "flow")), papers, offered=set())
    reasons = {m.paper.id: [(r.term, r.fields) for r in m.reasons] for m in s.matches}
    assert reasons == {"1": [("diffusion", ("title",))],
                       "2": [("flow", ("abstract",))],
                       "3": [("diffusion", ("keywords",)), ("flow", ("keywords",))]}
    assert s.matches[0].why  # rendered into the email


def test_exclude_wins_over_topics() -> None:
    papers = [paper("1", title="A survey of diffusion"), paper("2", title="Diffusion at scale")]
    s = select(sub(topics=("diffusion",), exclude=("survey",)), papers, offered=set())
    assert [m.paper.id for m in s.matches] == ["2"]
    feed = Feed.of(papers)
    verdict = Filter.of(sub(topics=("diffusion",), exclude=("survey",)), feed).verdicts(feed)[0]
    assert verdict.drop is Drop.EXCLUDED and verdict.detail == "'survey' in title"


def test_authors_match_without_case_or_accents() -> None:
    papers = [paper("1", authors=("Łukasz Kaiser",)), paper("2", authors=("Yejin  Choi",)),
              paper("3", authors=("Someone Else",))]
    s = select(sub(authors=("lukasz kaiser", "YEJIN CHOI")), papers, offered=set())
    assert sorted(m.paper.id for m in s.matches) == ["1", "2"]
    assert all(m.reasons[0].kind is ReasonKind.AUTHOR for m in s.matches)


def test_topics_or_authors_either_matches() -> None:
    papers = [paper("1", title="diffusion"), paper("2", authors=("Yejin Choi",)),
              paper("3", title="other")]
    s = select(sub(topics=("diffusion",), authors=("Yejin Choi",)), papers, offered=set())
    assert sorted(m.paper.id for m in s.matches) == ["1", "2"]


def test_no_topics_no_authors_means_every_paper() -> None:
    s = select(sub(), [paper("1"), paper("2")], offered=set())
    assert len(s.matches) == 2
    assert s.matches[0].reasons[0].kind is ReasonKind.EVERYTHING


def test_min_upvotes() -> None:
    s = select(sub(min_upvotes=5), [paper("1", upvotes=4), paper("2", upvotes=5)], offered=set())
    assert [m.paper.id for m in s.matches] == ["2"]


def test_rank_by_upvotes_then_newer_then_cap_and_offer_all_candidates() -> None:
    papers = [paper("a", upvotes=3, day=date(2025, 6, 1)),
              paper("b", upvotes=3, day=date(2025, 6, 2)),
              paper("c", upvotes=10, day=date(2025, 5, 30)),
              paper("d", upvotes=1, day=date(2025, 6, 2))]
    s = select(sub(max_papers=2), papers, offered=set())
    assert [m.paper.id for m in s.matches] == ["c", "b"]
    assert sorted(s.offered) == ["a", "b", "c", "d"]
    assert s.over_cap == 2


def test_already_offered_papers_are_never_candidates_again() -> None:
    papers = [paper("a", upvotes=50), paper("b", upvotes=1)]
    s = select(sub(max_papers=1), papers, offered={"a"})
    assert [m.paper.id for m in s.matches] == ["b"]
    assert s.already_offered == 1 and s.matched_total == 2
    nothing = select(sub(), papers, offered={"a", "b"})
    assert nothing.matches == () and nothing.matched_total == 2


@pytest.mark.parametrize(("follow", "author", "expected"), [
    ("Yejin Choi", "Yejin Choi", True),
    ("yejin choi", "YEJIN CHOI", True),
    ("Yejin Choi", "Yéjin Chöi", True),
    ("Y. Choi", "Yejin Choi", True),  # the subscriber's own initial: any first name with it
    ("Y Choi", "Yejin Choi", True),
    ("Yejin Choi", "Yejin A. Choi", True),  # a middle initial the subscriber left out
    ("Yejin A. Choi", "Yejin Choi", True),
    ("Jean-Pierre Dupont", "Jean Pierre Dupont", True),
    # what must not match
    ("Yejin Choi", "Y. Choi", False),  # the paper's initial may be anyone's
    ("Y. Choi", "Hyun Choi", False),
    ("Y. Choi", "Yejin Park", False),
    ("Yejin Choi", "Yejin Choi-Park", False),
    ("Ming Li", "Ming Xiao Li", False),  # a middle name is another person
    ("Yejin A. Choi", "Yejin B. Choi", False),
    ("Choi", "Yejin Choi", False),  # a surname alone is too many people
    ("Yejin Choi", "Choi Yejin", False),
])
def test_author_names_initials_and_middle_names(follow: str, author: str,
                                                expected: bool) -> None:
    papers = [paper("1", authors=("Someone Else", author))]
    got = select(sub(authors=(follow,)), papers, offered=set()).matches
    assert bool(got) is expected
