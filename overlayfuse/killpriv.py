"""Clearing set-user-ID and set-group-ID bits where the kernel leaves it to the daemon.

With FUSE_HANDLE_KILLPRIV_V2 (`capabilities.KILLPRIV_V2`) the kernel no longer clears them
itself, nor asks for `security.capability` before every write; it flags the write, truncate
or open with O_TRUNC of a caller without CAP_FSETID instead, and the daemon clears the bits.
`security.capability` needs nothing from the daemon: its own write, truncate or chown of the
upper file makes the upper filesystem remove it, whoever the caller, as the kernel does.
"""

from __future__ import annotations

import os
import stat


def bits_to_clear(mode: int) -> int:
    """The set-ID bits that a write or truncate by a caller without CAP_FSETID clears (the
    kernel's `should_remove_suid`): set-user-ID, and set-group-ID if the group may execute
    (without group execute, set-group-ID means mandatory locking and stays)."""
    if not stat.S_ISREG(mode):
        return 0
    bits = mode & stat.S_ISUID
    if mode & stat.S_ISGID and mode & stat.S_IXGRP:
        bits |= stat.S_ISGID
    return bits


def clear_setid(fd: int) -> bool:
    """Clear what `bits_to_clear` names on the file open as `fd`; whether the mode changed."""
    mode = os.fstat(fd).st_mode
    bits = bits_to_clear(mode)
    if bits:
        os.fchmod(fd, stat.S_IMODE(mode) & ~bits)
    return bool(bits)
