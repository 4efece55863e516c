"""Files and directories that hold secrets, private to the gateway's user whatever its umask.

What the gateway creates for the server secret and the SQLite store is mode 600 (files) and 700
(directories), set exactly (``fchmod``/``chmod`` after creating: a umask only removes bits, and a permissive
one such as 000 must not make a group- or world-readable store). Directories that already exist are left as
they are: the gateway cannot tell whether it owns them (the store may sit in a shared directory). What an
existing file gets is the caller's choice (docs/security.md): a secret file others can read is refused, a
store file is tightened with :func:`tighten`.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("gateway.security")

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each mode 700. Raises OSError."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for path in reversed(missing):
        try:
            path.mkdir(DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process (the CLI and the server start together): not ours
        os.chmod(path, DIR_MODE)


def create_private_file(path: Path) -> int | None:
    """Create ``path`` empty and mode 600; its descriptor, open for writing, or None if it already exists.
    Raises OSError for anything else."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return None
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(path: Path) -> None:
    """If ``path`` exists with any group or other permission, set it to 600 and log a warning naming the file
    and its old mode (never its content). When it cannot be changed (another owner), only the warning."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, FILE_MODE)
    except OSError as exc:
        log.warning("%s has mode %o: other users can reach it and it cannot be changed (%s); chmod 600 it",
                    path, mode, exc.strerror)
        return
    log.warning("%s had mode %o, open to other users: changed to 600", path, mode)
