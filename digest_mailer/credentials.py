"""Secrets come from the environment or from a file only its owner can read; never from the
config file itself."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from digest_mailer.errors import DigestMailerError

MAX_SECRET_FILE = 64 * 1024  # a password or a PEM key; anything bigger is the wrong file


def read_private_file(path: Path, what: str, key: str = "") -> bytes:
    """The file's bytes, refused when its group or others may read it, when it is not a
    regular file (a FIFO would block the run forever), or when it is not small. `key` names
    the config key that points at it, for the message."""
    where = f"{path} ({key})" if key else str(path)
    fix = f"fix {key}" if key else "fix the path"
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as e:
        raise DigestMailerError(f"{where}: the {what} file does not exist",
                                hint=f"create it or {fix}") from e
    except OSError as e:
        raise DigestMailerError(f"{where}: cannot read the {what} ({e.strerror})",
                                hint=f"let the user that runs digest-mailer read it, or {fix}"
                                ) from e
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise DigestMailerError(f"{where}: the {what} is not a regular file "
                                f"({stat.filemode(info.st_mode)})",
                                hint=f"point {key or 'it'} at a file holding the {what}")
    with os.fdopen(fd, "rb") as f:
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise DigestMailerError(
                f"{where}: the {what} is readable by others (mode "
                f"{stat.filemode(info.st_mode)})", hint=f"chmod 600 {path}")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise DigestMailerError(f"{where}: the {what} belongs to another user",
                                    hint="the user that runs digest-mailer must own it")
        if info.st_size > MAX_SECRET_FILE:
            raise DigestMailerError(f"{where}: the {what} is {info.st_size} bytes; expected "
                                    f"at most {MAX_SECRET_FILE}", hint=fix)
        try:
            return f.read(MAX_SECRET_FILE + 1)
        except OSError as e:
            raise DigestMailerError(f"{where}: cannot read the {what} ({e.strerror})") from e


def password(env: Mapping[str, str], env_name: str, file: Path | None) -> str:
    """From the file when one is set, else from the environment; '' when the environment does
    not have it. An empty or unreadable file is an error about the file."""
    if file is None:
        return env.get(env_name, "")
    data = read_private_file(file, "SMTP password", "delivery.smtp.password_file")
    try:
        value = data.decode("utf-8").strip("\r\n")
    except UnicodeDecodeError as e:
        raise DigestMailerError(f"{file} (delivery.smtp.password_file): not UTF-8 text",
                                hint="write the password as UTF-8 text") from e
    if not value:
        raise DigestMailerError(f"{file} (delivery.smtp.password_file): the file is empty",
                                hint="write the SMTP password into it")
    return value
