"""Errors raised before the mount is live; the CLI prints each as one line."""

from __future__ import annotations

import os


class UsageError(Exception):
    """The command line itself is malformed."""


class MountError(Exception):
    """The mount cannot be made; `errno` is what kernel overlayfs would return (None where
    fusermount3 refused, whose own message says why)."""

    def __init__(self, errno: int | None, message: str, path: str | None = None) -> None:
        self.errno = errno
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:
        message = self.args[0]
        if self.path is not None:
            message = f"{message}: {self.path}"
        if self.errno is None:
            return message
        return f"{message} ({os.strerror(self.errno)})"
