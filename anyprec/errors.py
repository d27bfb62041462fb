"""The errors anyprec reports to a user, each with the exit code `anyprec` returns for it.

Every message names what was wrong (the flag, path or value) and the fix, in one or two
lines; `anyprec.cli.main` prints it without a traceback. Anything else that escapes is a
bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re

EXIT_INPUT = 2  # a flag, model folder or artifact the user gave is wrong (argparse uses 2 too)
EXIT_OUTPUT = 3  # --out (or another output) is refused to protect what is there
EXIT_SYSTEM = 4  # the system refused: disk full, read-only location, no permission


class AnyprecError(Exception):
    """Base of every error shown to a user as one or two lines."""

    exit_code = EXIT_INPUT


class UsageError(AnyprecError, ValueError):
    """A command-line value is out of range or inconsistent with another."""


class PrecisionError(UsageError):
    """A bit-width or plan the model does not have (anyprec.precision, the one place it is checked)."""


class ModelError(AnyprecError, ValueError):
    """A base-model reference or folder cannot be used."""


class OutputError(AnyprecError):
    """An output location is refused, so that nothing the tool did not create is touched."""

    exit_code = EXIT_OUTPUT


class SystemLimitError(AnyprecError):
    """The operating system refused a write (disk full, read-only, permission)."""

    exit_code = EXIT_SYSTEM


# errno values that are the environment's answer, not a bug: shown as a short message
SYSTEM_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space there or choose another location",
    errno.EDQUOT: "the disk quota is exhausted: free space there or choose another location",
    errno.EROFS: "the location is read-only: choose a writable location",
    errno.EACCES: "permission denied: choose a location you can write to",
    errno.EPERM: "operation not permitted: choose a location you own",
    errno.EBUSY: "the location is busy (a mount point?): choose a folder inside it",
    errno.EXDEV: "the location is on another file system than its parent (a mount point?): choose a folder inside it",
    errno.EFBIG: "the file size limit was reached: raise it (ulimit -f) or choose another location",
}


def system_error(err: OSError) -> SystemLimitError | None:
    """The user-facing form of an OSError whose errno is in SYSTEM_ERRNOS, else None."""
    hint = SYSTEM_ERRNOS.get(err.errno or 0)
    if hint is None:
        return None
    where = err.filename or "the output location"
    return SystemLimitError(f"cannot write {where}: {err.strerror or hint.split(':')[0]}; {hint.split(': ', 1)[1]}")


def oserror_from_rust(err: Exception, path: object) -> OSError | None:
    """An OSError for a Rust-side I/O failure so it is reported like Python's: safetensors says
    'IoError(Os { code: 28, kind: StorageFull, ... })' (Debug) or '... (os error 28)' (Display)."""
    match = re.search(r"os error (\d+)|Os \{ code: (\d+)", str(err))
    if match is None:
        return None
    code = int(match.group(1) or match.group(2))
    import os

    return OSError(code, os.strerror(code), str(path))
