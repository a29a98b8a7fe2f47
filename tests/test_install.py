"""`pip install .` (a built wheel, not editable) works from any directory: templates ship
inside the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO, SAMPLE


def test_wheel_installs_and_runs_a_dry_run_from_anywhere(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(REPO)], check=True, timeout=300)
    (wheel,) = dist.glob("digest_mailer-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    # The dependencies come from the test environment, read after the venv's own packages,
    # so `digest_mailer` itself can only be the installed wheel.
    venv_site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    (venv_site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(REPO / "config.example.toml", work / "digest-mailer.toml")
    shutil.copy(SAMPLE, work / "feed.json")
    where = subprocess.run(
        [str(python), "-c", "import digest_mailer; print(digest_mailer.__file__)"],
        cwd=work, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv))
    assert (Path(where).parent / "templates" / "digest.mjml.j2").exists()
    proc = subprocess.run([str(venv / "bin" / "digest-mailer"), "run", "--dry-run", "--source",
                           "feed.json", "--date", "2025-06-02"],
                          cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "3 email(s) written" in proc.stdout
    assert (work / "preview" / "2025-06-02" / "index.html").exists()
    assert not (work / "digest-state.sqlite3").exists()
