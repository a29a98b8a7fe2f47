"""Secrets come from the environment or from a file only its owner can read; never from the
config file itself."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from digest_mailer.errors import DigestMailerError


def read_private_file(path: Path, what: str) -> bytes:
    """The file's bytes, refused when its group or others may read it."""
    try:
        info = path.stat()
    except OSError as e:
        raise DigestMailerError(f"{path}: cannot read the {what} ({e.strerror})") from e
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DigestMailerError(
            f"{path}: the {what} is readable by others (mode {stat.filemode(info.st_mode)})",
            hint=f"chmod 600 {path}")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise DigestMailerError(f"{path}: the {what} belongs to another user",
                                hint="the user that runs digest-mailer must own it")
    try:
        return path.read_bytes()
    except OSError as e:
        raise DigestMailerError(f"{path}: cannot read the {what} ({e.strerror})") from e


def password(env: Mapping[str, str], env_name: str, file: Path | None) -> str:
    """From the file when one is set, else from the environment; '' when neither has it."""
    if file is not None:
        return read_private_file(file, "SMTP password").decode("utf-8").strip("\r\n")
    return env.get(env_name, "")
