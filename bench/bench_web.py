"""Timings of the self-service pages, served by uvicorn in this process and asked by httpx
over loopback: median and worst of N requests each. The ledger holds 7 days x 60 papers (the
preview reads their titles); confirmation emails go to the file backend.

    .venv/bin/python bench/bench_web.py --requests 50
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import tempfile
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn

from digest_mailer.models import Paper
from digest_mailer.store import Ledger
from digest_mailer.web import Tokens
from digest_mailer.web_pages import create_site

WORDS = ["diffusion", "transformer", "speech", "recognition", "reinforcement", "learning",
         "agents", "world", "model", "retrieval", "vision", "language", "robot", "policy",
         "benchmark", "quantization", "scaling", "reasoning", "video", "generation", "graph",
         "neural", "network", "federated", "privacy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    env = {"DIGEST_UNSUBSCRIBE_SECRET": "bench-secret-0123456789abcdef"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        (folder / "c.toml").write_text(f"""[newsletter]
name = "Daily Papers"
from = "Daily Papers <papers@example.org>"
[state]
path = "state.sqlite3"
[delivery]
backend = "file"
out_dir = "out"
[unsubscribe]
url = "https://papers.example.org/unsubscribe/{{token}}"
[web]
base_url = "{base}"
""")
        today = date(2025, 6, 2)
        papers = [Paper(id=f"2506.{d:02d}{i:03d}", title=" ".join(
            WORDS[(d * 7 + i * k) % len(WORDS)] for k in range(1, 9)).title(),
            listed_on=today - timedelta(days=d)) for d in range(7) for i in range(60)]
        with Ledger.open(folder / "state.sqlite3") as ledger:
            ledger.remember(papers, datetime.now(UTC))
        app = create_site(Tokens(folder / "c.toml", env), env)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", proxy_headers=True,
                                               forwarded_allow_ips="127.0.0.1"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.02)
        with httpx.Client(base_url=base) as c:
            page = c.get("/")
            found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
            assert found
            csrf = found.group(1)
            form = {"csrf": csrf, "topics": "diffusion\nspeech recognition", "frequency": "daily",
                    "weekday": "mon", "action": "subscribe", "website": ""}
            n = 0

            def signup() -> httpx.Response:
                nonlocal n
                n += 1
                return c.post("/", data={**form, "email": f"r{n}@example.org"},
                              headers={"X-Forwarded-For": f"10.0.{n // 250}.{n % 250}"})

            def confirm() -> httpx.Response:
                signup()
                eml = max((folder / "out").rglob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
                text = eml.read_bytes().decode("utf-8", "replace").replace("=\r\n", "")
                link = re.search(r"/confirm/[A-Za-z0-9_.\-]+", text)
                assert link
                return c.get(link.group(0))

            cases = {
                "GET / (sign-up page)": lambda: c.get("/"),
                "POST /preview (2 topics, 420 papers)": lambda: c.post("/preview", data=form),
                "POST / (sign-up, confirmation email written)": signup,
                "sign-up + GET /confirm (same browser)": confirm,
            }
            for label, call in cases.items():
                times = []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    r = call()
                    times.append(time.perf_counter() - started)
                    assert r.status_code == 200, (label, r.status_code, r.text[:300])
                print(f"{label}: median {statistics.median(times) * 1000:.1f} ms, "
                      f"worst {max(times) * 1000:.1f} ms ({args.requests} requests)")
        server.should_exit = True


if __name__ == "__main__":
    main()
