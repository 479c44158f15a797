"""A daemon's output read back after its test, for failures it reported: what the pytest
plugin's `overlay` fixture and the project's own tests (tests/conftest.py) check in each
test's teardown.

The daemon logs one record per line in the format of daemon.py; a traceback continues its
record on the following lines. An errno answered to a caller is never logged, so every
WARNING, ERROR or CRITICAL record, and any output that is not a record (a traceback or
message Python printed itself), means something went wrong inside the daemon. A test that
provokes such output on purpose lists patterns for it with
`@pytest.mark.overlayfuse_log_allows(r"regex", ...)`: a record that one of them matches
(`re.search` over the whole record) is expected.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .overlay import BaseOverlay, Overlay

MARKER = "overlayfuse_log_allows"
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
            if level not in QUIET_LEVELS and not any(pattern.search(record)
                                                     for pattern in patterns)]


class DaemonOutput:
    """Where one daemon writes: its stderr (always; everything goes there without a log
    file) and its log file from the size it had at the mount (tests reuse log files)."""

    def __init__(self, pid: int | None, log_file: Path | None) -> None:
        self.log_file = log_file
        self.log_offset = 0
        self.stderr: int | None = None
        if log_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.log_offset = os.stat(log_file).st_size
        if pid is not None:
            # The daemon's stderr is an unnamed file that Overlay closes at the unmount; its
            # /proc link opens the same file, which this keeps readable afterwards.
            with contextlib.suppress(OSError):
                self.stderr = os.open(f"/proc/{pid}/fd/2", os.O_RDONLY | os.O_CLOEXEC)

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


class LogCheck:
    """The overlayfuse daemons of one test: what each one wrote is read once it is unmounted
    (or, for one still mounted, when the test ends) and judged against `allowed`."""

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = tuple(allowed)
        self._outputs: dict[int, tuple[str, DaemonOutput]] = {}
        self._found: list[str] = []

    def mounted(self, overlay: BaseOverlay) -> None:
        if isinstance(overlay, Overlay):
            self._outputs[id(overlay)] = (str(overlay.merged),
                                          DaemonOutput(overlay.pid, overlay.log_file))

    def unmounted(self, overlay: BaseOverlay) -> None:
        if id(overlay) in self._outputs:
            self._judge(*self._outputs.pop(id(overlay)))

    def failure(self) -> str | None:
        """Reads what is left; the report of every unexpected record, or None."""
        for merged, output in self._outputs.values():
            self._judge(merged, output)
        self._outputs.clear()
        if not self._found:
            return None
        return (f"the overlayfuse daemon logged unexpected errors (allow the expected ones "
                f"with @pytest.mark.{MARKER}):\n" + "\n".join(self._found))

    def _judge(self, merged: str, output: DaemonOutput) -> None:
        # Overlays sharing a log file each read what the others wrote after their mount.
        for record in unexpected(output.read(), self.allowed):
            if not any(record in earlier for earlier in self._found):
                self._found.append(f"overlayfuse on {merged}:\n{record}")
