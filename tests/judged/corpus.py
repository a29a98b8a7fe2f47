"""The papers of the judged set, read from the shared captures (never copied into the repo).

Papers from the HF captures are keyed by arXiv id; papers from the seeds text dump (a copy of
the HF papers page as text: title line, abstract line, then author count and date) have no id,
so they are keyed by their title as `seed:<title>`.
"""

from __future__ import annotations

from datetime import date
from itertools import pairwise
from pathlib import Path

from digest_mailer.models import Paper
from digest_mailer.sources import FileSource

CAPTURES = ("hf_daily_papers_2024-08-01.json", "hf_daily_papers_2025-06-02.json",
            "hf_papers_page_2024-08-01.html")
SEEDS = "seeds/000_e8df2a45697c386a.txt"
ABSTRACT_MIN = 250


def seed_papers(path: Path) -> list[Paper]:
    """A title is a short line right before a long one (its abstract); author counts, dates
    and organisation names in between are short lines followed by short lines."""
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    papers = []
    for title, abstract in pairwise(lines):
        if len(abstract) >= ABSTRACT_MIN and len(title) < ABSTRACT_MIN:
            papers.append(Paper(id=f"seed:{title}", title=title, abstract=abstract))
    return papers


def load(shared: Path, repo: Path) -> dict[str, Paper]:
    """Every paper by key; the sample feed from the repo, the rest from `shared`."""
    papers: dict[str, Paper] = {}
    day = date(2025, 6, 2)
    sources = [("huggingface", repo / "samples" / "daily-papers-sample.json")]
    for name in CAPTURES:
        kind = "huggingface-page" if name.endswith(".html") else "huggingface"
        sources.append((kind, shared / "data" / name))
    for kind, path in sources:
        for p in FileSource(kind, path).fetch(day).papers:
            papers.setdefault(p.id, p)
    seeds = shared / SEEDS
    if seeds.exists():
        for p in seed_papers(seeds):
            papers.setdefault(p.id, p)
    return papers
