"""Failures a run reports in one line (train.py prints it without a traceback): what went wrong, what
was kept, what to do. Input refused before the run is engine/errors.py's (exit 2); these are things that
happened while the run was going (exit 1)."""

from __future__ import annotations

import errno
import os


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why, what is kept and how to continue."""


class StorageError(RunFailed):
    """A file of the run folder could not be written (disk full, read-only, quota); the file it would
    have replaced is unchanged (writes are atomic)."""


def storage_error(err: OSError, path: str | os.PathLike) -> StorageError:
    code = errno.errorcode.get(err.errno, "") if err.errno else ""
    reason = f"{err.strerror or err}{f' [{code}]' if code else ''}"
    return StorageError(
        f"cannot write {path}: {reason}; the file it would replace is unchanged. "
        "Free disk space or fix the folder's permissions"
    )
