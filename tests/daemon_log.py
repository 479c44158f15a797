"""What a daemon wrote during a test, and which of it is an unexpected error.

The daemon logs one record per line in the format of overlayfuse/daemon.py (a traceback
continues its record on the following lines). An errno answered to a caller is never logged,
so every WARNING, ERROR or CRITICAL record, every traceback, and any output that is not a
record (Python's own last-resort messages, "Exception ignored in ...") means something went
wrong inside the daemon. A test that provokes such output on purpose lists patterns for it
with `@pytest.mark.daemon_log_allows(r"regex", ...)`; a record that one of them matches
(`re.search` over the whole record) is expected.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

MARKER = "daemon_log_allows"
RECORD_START = re.compile(rb"^overlayfuse\[\d+\]: (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
QUIET_LEVELS = {b"DEBUG", b"INFO"}


def records(text: bytes) -> list[tuple[bytes | None, str]]:
    """(level, record text) for each record. Lines after a WARNING or worse record continue
    it (its traceback); other lines outside the log format make records of their own, with
    level None (a DEBUG or INFO record is one line)."""
    found: list[tuple[bytes | None, list[bytes]]] = []
    for line in text.splitlines():
        start = RECORD_START.match(line)
        if start is not None:
            found.append((start.group(1), [line]))
        elif found and found[-1][0] not in QUIET_LEVELS:
            found[-1][1].append(line)
        else:
            found.append((None, [line]))
    return [(level, b"\n".join(lines).rstrip().decode(errors="backslashreplace"))
            for level, lines in found if level is not None or any(l.strip() for l in lines)]


def unexpected(text: bytes, allowed: Iterable[str]) -> list[str]:
    """The records of `text` that report a failure and that no pattern of `allowed` matches."""
    patterns = [re.compile(pattern) for pattern in allowed]
    return [record for level, record in records(text)
            if level not in QUIET_LEVELS and not any(pattern.search(record) for pattern in patterns)]


class DaemonOutput:
    """Where one daemon writes: its stderr (always; everything goes there without a log
    file) and its log file from the size it had at the mount (tests reuse log files)."""

    def __init__(self, pid: int | None, log_file: Path | None) -> None:
        self.log_file = log_file
        self.log_offset = 0
        self.stderr: int | None = None
        if log_file is not None:
            try:
                self.log_offset = os.stat(log_file).st_size
            except FileNotFoundError:
                pass
        if pid is not None:
            # The daemon's stderr is an unnamed file that Overlay closes at the unmount; its
            # /proc link opens the same file, which this keeps readable afterwards.
            try:
                self.stderr = os.open(f"/proc/{pid}/fd/2", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass

    def read(self) -> bytes:
        """Everything written so far; closes the stderr file."""
        text = b""
        if self.stderr is not None:
            text += os.pread(self.stderr, 1 << 24, 0)
            os.close(self.stderr)
            self.stderr = None
        if self.log_file is not None:
            with contextlib.suppress(FileNotFoundError), open(self.log_file, "rb") as log:
                log.seek(self.log_offset)
                text += b"\n" + log.read()
        return text
