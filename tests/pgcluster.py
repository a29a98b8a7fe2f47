"""A throwaway PostgreSQL cluster for the tests: initdb in a temporary folder, started on a free
127.0.0.1 port with trust authentication, stopped and removed afterwards. initdb refuses root,
so under root the cluster belongs to the `postgres` user (Debian's package creates it).

    python tests/pgcluster.py start DIR    # prints the cluster's URL; DIR is created
    python tests/pgcluster.py stop DIR     # stops it and removes DIR

`.ci/run` uses these two; tests/conftest.py calls start()/stop() itself when
DIGEST_MAILER_TEST_PG is not set."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

USER = "digest"
DATABASE = "digest_test"


def bindir() -> Path | None:
    """Debian's newest server binaries, or initdb on PATH; None when there is no server."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _as_owner(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(root: Path) -> str:
    """A running cluster under `root` with an empty database; its URL (no password)."""
    bins = bindir()
    if bins is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb): install Debian's "
                           "`postgresql` package")
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "log"
    run = dict(check=True, capture_output=True, text=True, timeout=120, cwd=root)
    subprocess.run(_as_owner([str(bins / "initdb"), "-D", str(data), "-U", USER, "-A", "trust",
                              "-E", "UTF8", "--locale=C", "--no-sync"]), **run)  # type: ignore
    # Trust for the tests' user; a password for `secure`, the role the login tests create.
    hba = data / "pg_hba.conf"
    hba.write_text("host all secure 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    port = _free_port()
    # Durability off: the cluster dies with the tests.
    options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
    subprocess.run(_as_owner([str(bins / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                              "-t", "60", "-o", options, "start"]), **run)  # type: ignore
    url = f"postgresql://{USER}@127.0.0.1:{port}"
    subprocess.run(_as_owner([str(bins / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                              "-U", USER, DATABASE]), **run)  # type: ignore
    return f"{url}/{DATABASE}"


def stop(root: Path) -> None:
    bins = bindir()
    if bins is not None and (root / "data" / "postmaster.pid").exists():
        subprocess.run(_as_owner([str(bins / "pg_ctl"), "-D", str(root / "data"), "-m",
                                  "immediate", "-w", "stop"]), capture_output=True,
                       timeout=60, check=False)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: pgcluster.py start|stop DIR")
    where = Path(sys.argv[2])
    if sys.argv[1] == "start":
        try:
            print(start(where))
        except (RuntimeError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or ""
            sys.exit(f"pgcluster: {e} {detail}".strip())
    else:
        stop(where)
