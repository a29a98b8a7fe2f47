"""digest-mailer's benchmark: personalised digests at scale, on this machine.

    python bench/bench.py --subscribers 100000 --papers 100 --profiles 500

It generates a config (subscribers spread over distinct topic profiles drawn from real ML
vocabulary, names with non-ASCII letters) and a feed in the HF daily papers API schema, then
measures, in the same run:

1. building every personalised message (select + render + personalise + serialise);
2. the naive pipeline (everything rendered and serialised per subscriber) on a sample;
3. an end-to-end `run` (from the start of the feed's read to the last message accepted, and
   also the whole run, from its call to its return; a fresh ledger, in a process of its own)
   through a local SMTP server on 127.0.0.1 (smtp-sink when installed, else
   aiosmtpd), at `connections` 1, 2 and 4, against a fixed reference: a plain
   `smtplib.SMTP.sendmail` loop sending the same pre-built messages to the same server over
   the same number of connections (one process per connection);
4. peak RSS (each process's own high-water mark, VmHWM: a forked child's ru_maxrss would
   include its parent's), and how time and memory grow from 1k to 10k to the full count;
plus selection alone, `digest-mailer --help`, and the size of a 20-paper digest.
Each figure is the median of --repeats runs. --json prints machine-readable results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import shutil
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

# This checkout's code first, not the one installed in the environment: run from a checkout of
# an older commit, the bench measures that commit (its children are told the same below).
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = date(2025, 6, 2)
NOW = datetime(2025, 6, 2, 7, tzinfo=UTC)
SECRET = "bench-secret-0123456789abcdef"

VOCABULARY = [
    "diffusion", "diffusion transformer", "flow matching", "normalizing flow",
    "reinforcement learning", "RLHF", "reward model", "preference optimization", "DPO",
    "large language model", "language model", "instruction tuning", "chain-of-thought",
    "reasoning", "mathematical reasoning", "code generation", "program synthesis", "agents",
    "tool use", "retrieval-augmented generation", "retrieval", "embedding", "vision-language",
    "multimodal", "video generation", "image generation", "text-to-image", "text-to-video",
    "3D reconstruction", "gaussian splatting", "NeRF", "point cloud", "robotics",
    "world model", "speech recognition", "text-to-speech", "audio", "music generation",
    "mixture of experts", "sparse attention", "linear attention", "state space model", "Mamba",
    "quantization", "pruning", "distillation", "knowledge distillation", "efficient inference",
    "speculative decoding", "long context", "KV cache", "tokenization", "pretraining",
    "scaling laws", "data curation", "synthetic data", "benchmark", "evaluation",
    "hallucination", "alignment", "safety", "jailbreak", "red teaming", "interpretability",
    "mechanistic interpretability", "federated learning", "graph neural network",
    "time series", "medical imaging", "protein", "molecule", "weather forecasting",
    "optical character recognition", "document understanding", "table understanding",
    "autonomous driving", "semantic segmentation", "object detection", "video understanding",
]
EXCLUDES = ["survey", "benchmark", "dataset", "position paper", "workshop"]
FIRST = ["Ada", "Zoë", "Łukasz", "José", "Søren", "Chloé", "Dmitri", "Ana", "Björn", "Mei",
         "Aarav", "Fatima", "Yejin", "Jürgen", "Inês", "Kaito", "Nia", "Omar", "Priya", "Émile",
         "李", "محمد", "Ἀλέξανδρος", "Oğuz"]
LAST = ["Lovelace", "Nowak", "Müller", "García", "Kierkegaard", "Dubois", "Ivanov", "Lima",
        "Berg", "Chen", "Sharma", "Khan", "Choi", "Schmidhuber", "Duarte", "Mori", "Okafor",
        "Haddad", "Patel", "Zola", "小龙", "الخوارزمي", "Παπαδόπουλος", "Yılmaz"]


# -- generation -------------------------------------------------------------------------------

def make_feed(papers: int, rng: random.Random) -> list[dict[str, Any]]:
    items = []
    for n in range(papers):
        terms = rng.sample(VOCABULARY, 3)
        title = f"{terms[0].title()} Meets {terms[1]}: Towards Better {terms[2]}"
        sentences = [f"We study {terms[0]} for {terms[1]}.",
                     f"Our method improves {terms[2]} on standard benchmarks.",
                     "Experiments across many settings show consistent gains over strong "
                     "baselines, and an ablation isolates each component."] * 3
        authors = [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(rng.randint(2, 12))]
        upvotes = int(rng.paretovariate(1.2) * 3)
        items.append({"paper": {
            "id": f"2506.{n:05d}", "title": title, "summary": " ".join(sentences),
            "authors": [{"name": a, "hidden": False} for a in authors],
            "publishedAt": "2025-06-01T17:00:00.000Z",
            "submittedOnDailyAt": "2025-06-02T06:00:00.000Z", "upvotes": upvotes,
            "ai_summary": f"{terms[0].capitalize()} helps {terms[1]} and {terms[2]}.",
            "ai_keywords": terms, "githubRepo": f"https://github.com/example/p{n}"},
            "numComments": rng.randint(0, 9)})
    return items


def make_profiles(count: int, feed: list[dict[str, Any]], rng: random.Random
                  ) -> list[dict[str, Any]]:
    authors = sorted({a["name"] for item in feed for a in item["paper"]["authors"]})
    profiles = []
    for _ in range(count):
        p: dict[str, Any] = {"topics": rng.sample(VOCABULARY, rng.randint(1, 3))}
        if rng.random() < 0.3:
            p["exclude"] = [rng.choice(EXCLUDES)]
        if rng.random() < 0.2:
            p["authors"] = [rng.choice(authors)]
        if rng.random() < 0.05:
            p = {}  # every paper
        p["max_papers"] = rng.choice([5, 10, 20])
        if rng.random() < 0.2:
            p["min_upvotes"] = 3
        profiles.append(p)
    return profiles


def toml_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, int):
        return str(v)
    return json.dumps(v, ensure_ascii=False)


def write_config(folder: Path, subscribers: int, profiles: list[dict[str, Any]], feed: Path,
                 rng: random.Random, port: int = 25) -> Path:
    weights = [1 / (rank + 1) for rank in range(len(profiles))]  # a few popular profiles
    lines = [
        "[newsletter]", 'name = "Daily Papers"', 'from = "Daily Papers <papers@example.org>"',
        "[source]", 'kind = "huggingface"', f"location = {json.dumps(str(feed))}",
        "[state]", f"path = {json.dumps(str(folder / 'state.sqlite3'))}",
        "[delivery]", 'backend = "smtp"', f"out_dir = {json.dumps(str(folder / 'out'))}",
        "[delivery.smtp]", 'host = "127.0.0.1"', f"port = {port}", 'security = "none"',
        "[unsubscribe]", 'url = "https://papers.example.org/unsubscribe/{token}"',
        'mailto = "unsubscribe@example.org"',
    ]
    chosen = rng.choices(profiles, weights=weights, k=subscribers)
    for n, profile in enumerate(chosen):
        name = json.dumps(f"{rng.choice(FIRST)} {rng.choice(LAST)}", ensure_ascii=False)
        lines += ["[[subscribers]]", f'email = "reader{n}@example.org"', f"name = {name}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in profile.items()]
    path = folder / f"config-{subscribers}-{port}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- measurements -----------------------------------------------------------------------------

def peak_rss_mb(pid: int | str = "self") -> float:
    """This process's own peak RSS. ru_maxrss is not: after fork+exec it keeps the parent's."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid == "self" else 0.0


def build_all(config_path: Path) -> dict[str, Any]:
    """Every subscriber's message built and dropped: what a run does before the network."""
    from digest_mailer.compose import batch_key
    from digest_mailer.config import load_config
    from digest_mailer.pipeline import Envelope
    from digest_mailer.render import Renderer
    from digest_mailer.sources import FileSource

    config = load_config(config_path)
    subs = sorted(config.subscribers_view(), key=batch_key)  # the order a run takes them in
    papers = FileSource("huggingface", Path(config.source_location)).fetch(RUN).papers
    envelope = Envelope.of(config, SECRET.encode())
    composer = envelope.composer(Renderer(), papers, RUN, None, NOW)
    started = time.perf_counter()
    emails = size = 0
    for sub in subs:
        selection = composer.select(sub, ())
        if selection.matches:
            message = composer.compose(selection, RUN, NOW)
            emails += 1
            size += len(message.data)
    total = time.perf_counter() - started
    build = total - composer.render_seconds
    return {"subscribers": len(subs), "emails": emails, "seconds": total,
            "sets": composer.rendered_sets, "set_seconds": composer.render_seconds,
            "per_email_ms": build / emails * 1000, "emails_per_s": emails / build,
            "mean_bytes": size / emails, "peak_rss_mb": peak_rss_mb()}


def select_all(config_path: Path) -> dict[str, Any]:
    from digest_mailer.config import load_config
    from digest_mailer.pipeline import Envelope
    from digest_mailer.render import Renderer
    from digest_mailer.sources import FileSource

    config = load_config(config_path)
    subs = config.subscribers_view()
    papers = FileSource("huggingface", Path(config.source_location)).fetch(RUN).papers
    composer = Envelope.of(config, SECRET.encode()).composer(Renderer(), papers, RUN, None, NOW)
    started = time.perf_counter()
    for sub in subs:
        composer.select(sub, ())
    return {"subscribers": len(subs), "papers": len(papers),
            "seconds": time.perf_counter() - started}


def naive(config_path: Path, sample: int) -> dict[str, Any]:
    """Everything per subscriber: select, Jinja, MJML, premailer, MIME."""
    from digest_mailer.config import load_config
    from digest_mailer.message import (
        build_message,
        list_unsubscribe,
        make_message_id,
        unsubscribe_token,
    )
    from digest_mailer.models import Digest
    from digest_mailer.render import Renderer
    from digest_mailer.select import select
    from digest_mailer.sources import FileSource

    config = load_config(config_path)
    papers = FileSource("huggingface", Path(config.source_location)).fetch(RUN).papers
    renderer = Renderer()
    subs = []
    for sub in config.subscribers_view():  # the first `sample` with something to send
        if select(sub, papers, ()).matches:
            subs.append(sub)
            if len(subs) > sample:
                break
    emails, started = 0, 0.0
    for n, sub in enumerate(subs):
        if n == 1:  # the first one pays for importing MJML and premailer
            started = time.perf_counter()
        selection = select(sub, papers, ())
        token = unsubscribe_token(SECRET.encode(), sub.email)
        url = config.unsubscribe.url.replace("{token}", token)
        rendered = renderer.render(Digest("Daily Papers", RUN, sub, selection.matches,
                                          selection.over_cap, url))
        build_message(rendered, subscriber=sub, sender=config.newsletter.from_,
                      envelope_from=config.from_address, reply_to=None,
                      list_id_header="Daily Papers <dp.example.org>",
                      unsubscribe=list_unsubscribe(url, config.unsubscribe.mailto, token),
                      message_id=make_message_id("example.org", NOW), when=NOW, run_date=RUN)
        emails += n >= 1
    seconds = time.perf_counter() - started
    return {"emails": emails, "per_email_ms": seconds / emails * 1000,
            "emails_per_s": emails / seconds}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def start_sink(kind: str) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    sink = SMTP_SINK
    if kind == "smtp-sink":
        user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        proc = subprocess.Popen([sink, "-u", user, f"127.0.0.1:{port}", "1000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "smtp-sink"
    else:
        proc = subprocess.Popen([sys.executable, "-m", "aiosmtpd", "-n", "-l",
                                 f"127.0.0.1:{port}", "-c", "aiosmtpd.handlers.Sink"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "aiosmtpd"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, name
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the SMTP sink ({name}) did not start")


def _raw_child(port: str, messages: str, share: str, start_at: str) -> dict[str, Any]:
    """One connection of the reference: Python's own smtplib, sendmail in a loop."""
    import pickle

    batch = pickle.loads(Path(messages).read_bytes())
    n, of = (int(x) for x in share.split("/"))
    mine = batch[n::of]
    conn = smtplib.SMTP("127.0.0.1", int(port), timeout=30)
    conn.ehlo()
    while time.time() < float(start_at):
        time.sleep(0.001)
    started = time.time()
    for rcpt, data in mine:
        conn.sendmail("papers@example.org", [rcpt], data)
    ended = time.time()
    conn.quit()
    return {"sent": len(mine), "started": started, "ended": ended}


def raw_throughput(folder: Path, port: int, messages: list[tuple[str, bytes]],
                   connections: int) -> float:
    """The fixed reference: the same pre-built messages through plain smtplib.SMTP.sendmail
    over `connections` connections, one process each, all starting together."""
    import pickle

    path = folder / "raw-messages.pickle"
    path.write_bytes(pickle.dumps(messages))
    start_at = time.time() + 3  # every child connected and waiting
    code = (f"import json, sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]; "
            "import bench; print(json.dumps(bench._raw_child(*sys.argv[1:])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(port), str(path),
                               f"{n}/{connections}", str(start_at)], stdout=subprocess.PIPE,
                              text=True) for n in range(connections)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    return sum(r["sent"] for r in results) / seconds


def _e2e_child(path: str) -> dict[str, Any]:
    """One real run in a process of its own; its senders' peaks are sampled as they run."""
    import threading

    from digest_mailer.config import load_config
    from digest_mailer.pipeline import READING, RunOptions, run

    peaks: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        me = os.getpid()
        while not done.wait(0.1):
            try:
                kids = Path(f"/proc/{me}/task/{me}/children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                peaks[int(kid)] = max(peaks.get(int(kid), 0.0), peak_rss_mb(kid))

    # The interval the target names, "feed read to last message accepted": from the run's
    # note that it starts reading the feed to the last delivery's record (a sender stamps it
    # as the server's verdict comes back). Both are this machine's wall clock.
    reading: list[float] = []

    class Reading(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg == READING:
                reading.append(record.created)

    log = logging.getLogger("digest_mailer.pipeline")
    log.setLevel(logging.DEBUG)
    log.addHandler(Reading())
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    config = load_config(Path(path))
    before = os.times()
    started = time.perf_counter()
    report = run(config, RunOptions(run_date=RUN), now=NOW,
                 env={"DIGEST_UNSUBSCRIBE_SECRET": SECRET})
    whole = time.perf_counter() - started
    after = os.times()
    done.set()
    with closing(sqlite3.connect(config.state_path)) as db:
        last = max(datetime.fromisoformat(r[0]).timestamp()
                   for r in db.execute("SELECT sent_at FROM deliveries"))
    if len(reading) != 1:
        raise SystemExit(f"the run said it reads the feed {len(reading)} times, not once")
    # CPU per email, which a machine shared with other work disturbs less than the rates:
    # the run's own process, and its senders together (joined children; the sink is not ours).
    per = 1000 / max(report.delivered, 1)
    return {"emails": report.delivered, "failed": report.failed, "seconds": last - reading[0],
            "run_seconds": whole,
            "peak_rss_mb": peak_rss_mb(), "sender_peak_rss_mb": max(peaks.values(),
                                                                     default=0.0),
            "run_cpu_ms": (after[0] + after[1] - before[0] - before[1]) * per,
            "senders_cpu_ms": (after[2] + after[3] - before[2] - before[3]) * per,
            "load_average": os.getloadavg()[0]}


def end_to_end(folder: Path, subscribers: int, profiles: list[dict[str, Any]], feed: Path,
               sink: str, seed: int, connections: int) -> dict[str, Any]:
    from digest_mailer.config import load_config
    from digest_mailer.pipeline import Envelope
    from digest_mailer.render import Renderer
    from digest_mailer.sources import FileSource

    proc, port, name = start_sink(sink)
    try:
        fresh = Path(tempfile.mkdtemp(dir=folder))  # its own ledger: every repeat sends all
        path = write_config(fresh, subscribers, profiles, feed, random.Random(seed), port)
        path.write_text(path.read_text().replace(
            'security = "none"', f'security = "none"\nconnections = {connections}'))
        config = load_config(path)
        papers = FileSource("huggingface", Path(config.source_location)).fetch(RUN).papers
        composer = Envelope.of(config, SECRET.encode()).composer(Renderer(), papers, RUN, None,
                                                                 NOW)
        # The reference sends the same messages, built beforehand: a sample of 500 sent in
        # turn as many times as the run sends messages, so the bench itself stays small.
        built = []
        for s in config.subscribers_view():
            if (sel := composer.select(s, ())).matches:
                built.append((s.email, composer.compose(sel, RUN, NOW).data))
                if len(built) == 500:
                    break
        count = sum(1 for s in config.subscribers_view() if composer.select(s, ()).matches)
        raw = raw_throughput(fresh, port, [built[n % len(built)] for n in range(count)],
                             connections)
        result = in_child("_e2e_child", str(path))
    finally:
        proc.kill()
        proc.wait()
    rate = result["emails"] / result["seconds"]
    whole = result["emails"] / result["run_seconds"]
    return {"server": name, "connections": connections, **result, "emails_per_s": rate,
            "raw_emails_per_s": raw, "ratio": rate / raw, "run_emails_per_s": whole,
            "run_ratio": whole / raw}


def help_seconds(repeats: int) -> float:
    exe = shutil.which("digest-mailer") or str(Path(sys.executable).parent / "digest-mailer")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([exe, "--help"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def digest_size(folder: Path) -> int:
    """The HTML part of a 20-paper digest of this feed."""
    from digest_mailer.models import Digest, Subscriber
    from digest_mailer.render import Renderer
    from digest_mailer.select import select
    from digest_mailer.sources import FileSource

    papers = FileSource("huggingface", folder / "feed.json").fetch(RUN).papers
    sub = Subscriber("reader@example.org", "Zoë Nowak", max_papers=20)
    sel = select(sub, papers, ())
    html = Renderer().render(Digest("Daily Papers", RUN, sub, sel.matches, sel.over_cap,
                                    "https://papers.example.org/unsubscribe/x")).html
    return len(html.encode("utf-8"))


# -- driver -----------------------------------------------------------------------------------

def in_child(function: str, *args: str) -> dict[str, Any]:
    """A measurement in a fresh process, so its peak RSS is its own."""
    code = (f"import json, sys; sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]; "
            f"import bench; print(json.dumps(bench.{function}(*sys.argv[1:])))")
    out = subprocess.run([sys.executable, "-c", code, *args], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _build_child(path: str) -> dict[str, Any]:
    return build_all(Path(path))


def _select_child(path: str) -> dict[str, Any]:
    return select_all(Path(path))


def _naive_child(path: str, sample: str) -> dict[str, Any]:
    return naive(Path(path), int(sample))


def median_of(repeats: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    runs = [measure() for _ in range(repeats)]
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--papers", type=int, default=100)
    ap.add_argument("--profiles", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-sample", type=int, default=100)
    ap.add_argument("--e2e-subscribers", type=int, default=10_000,
                    help="subscribers in the end-to-end run (the SMTP server sets its pace)")
    ap.add_argument("--sink", choices=["both", "smtp-sink", "aiosmtpd"], default="both",
                    help="smtp-sink is Postfix's C sink (Debian: postfix), when installed")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--connections", default="1,2,4",
                    help="connection counts for the end-to-end runs (comma-separated)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--parts", default="build,select,naive,scaling,e2e,help,size",
                    help="which measurements to take (comma-separated)")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="digest-bench-"))
    feed = make_feed(args.papers, rng)
    (folder / "feed.json").write_text(json.dumps(feed))
    profiles = make_profiles(args.profiles, feed, rng)
    sizes = sorted({n for n in (1_000, 10_000, args.subscribers) if n <= args.subscribers})
    configs = {n: write_config(folder, n, profiles, folder / "feed.json", random.Random(n))
               for n in sizes}
    full = str(configs[args.subscribers])

    result: dict[str, Any] = {"cores": os.cpu_count(), "python": sys.version.split()[0],
                              "subscribers": args.subscribers, "papers": args.papers,
                              "profiles": args.profiles, "repeats": args.repeats}
    parts = set(args.parts.split(","))
    if "build" in parts:
        result["build"] = median_of(args.repeats, lambda: in_child("_build_child", full))
    if "select" in parts:
        result["select"] = median_of(args.repeats, lambda: in_child("_select_child", full))
    if "naive" in parts:
        result["naive"] = median_of(args.repeats, lambda: in_child(
            "_naive_child", full, str(args.naive_sample)))
    if {"build", "naive"} <= parts:
        result["speedup"] = result["naive"]["per_email_ms"] / result["build"]["per_email_ms"]
        result["speedup_with_sets"] = result["naive"]["per_email_ms"] / (
            result["build"]["seconds"] * 1000 / result["build"]["emails"])
    if "scaling" in parts:
        result["scaling"] = [in_child("_build_child", str(configs[n])) for n in sizes]
    if "e2e" in parts:
        sinks = ["aiosmtpd", "smtp-sink"] if args.sink == "both" else [args.sink]
        sinks = [s for s in sinks if s == "aiosmtpd" or os.path.exists(SMTP_SINK)]
        result["end_to_end"] = [median_of(args.repeats, lambda s=sink, c=int(c): end_to_end(
            folder, args.e2e_subscribers, profiles, folder / "feed.json", s, args.seed, c))
            for sink in sinks for c in args.connections.split(",")]
    if "help" in parts:
        result["help_seconds"] = help_seconds(5)
    if "size" in parts:
        result["digest_20_html_bytes"] = digest_size(folder)
    shutil.rmtree(folder, ignore_errors=True)

    if args.json or parts != set(ap.get_default("parts").split(",")):
        print(json.dumps(result, indent=2))
        return
    b, n = result["build"], result["naive"]
    rows = [
        ("machine", f"{result['cores']} cores, Python {result['python']}"),
        ("workload", f"{args.subscribers:,} subscribers, {args.papers} papers, "
                     f"{args.profiles} profiles; median of {args.repeats}"),
        ("build: per email (sets rendered)", f"{b['per_email_ms']:.3f} ms, "
                                             f"{b['emails_per_s']:,.0f} emails/s"),
        ("build: distinct digests", f"{b['sets']:,} in {b['set_seconds']:.1f} s"),
        ("build: all, sets included", f"{b['emails']:,} emails in {b['seconds']:.1f} s"),
        ("naive pipeline per email", f"{n['per_email_ms']:.2f} ms ({n['emails_per_s']:.0f}/s)"),
        ("speed-up over naive", f"{result['speedup']:.0f}x per email, "
                                f"{result['speedup_with_sets']:.0f}x with the sets"),
        ("selection only", f"{result['select']['seconds']:.2f} s for "
                           f"{result['select']['subscribers']:,}"),
        *((f"end to end via {e['server']}, {e['connections']} conn.",
           f"{e['emails']:,} emails: {e['emails_per_s']:.0f}/s vs smtplib's "
           f"{e['raw_emails_per_s']:.0f}/s = {e['ratio']:.2f}x (the whole run, from its call "
           f"to its return: {e['run_emails_per_s']:.0f}/s = {e['run_ratio']:.2f}x); "
           f"CPU per email: run "
           f"{e['run_cpu_ms']:.2f} ms, senders {e['senders_cpu_ms']:.2f} ms; peak RSS run "
           f"{e['peak_rss_mb']:.0f} MB, sender {e['sender_peak_rss_mb']:.0f} MB")
          for e in result["end_to_end"]),
        ("peak RSS at full size", f"{b['peak_rss_mb']:.0f} MB"),
        ("digest-mailer --help", f"{result['help_seconds']:.2f} s"),
        ("20-paper digest HTML", f"{result['digest_20_html_bytes'] / 1000:.1f} KB"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("scaling:")
    for s in result["scaling"]:
        print(f"  {s['subscribers']:>7,} subscribers: {s['seconds']:6.1f} s "
              f"({s['sets']} sets, {s['set_seconds']:.1f} s of them), "
              f"peak RSS {s['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
