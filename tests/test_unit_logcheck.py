"""The reading of a daemon's output by the teardown check (overlayfuse/logcheck.py), on
records made by the daemon's own log formatter."""

from __future__ import annotations

import logging
import sys

from overlayfuse.daemon import log_handler
from overlayfuse.logcheck import records, unexpected
from overlayfuse.options import parse_args

FORMATTER = log_handler(parse_args(["-f", "-o", "lowerdir=/a", "/m"]), None).formatter


def record(level: int, message: str, traceback: bool = False) -> bytes:
    exc_info = None
    if traceback:
        try:
            raise KeyError("planted")
        except KeyError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("overlayfuse", level, __file__, 1, message, (), exc_info)
    assert FORMATTER is not None
    return (FORMATTER.format(made) + "\n").encode()


def test_info_and_debug_records_are_expected() -> None:
    text = record(logging.INFO, "serving /m") + record(logging.DEBUG, "lookup(1, b'x')") \
        + record(logging.INFO, "unmounted /m")
    assert len(records(text)) == 3
    assert unexpected(text, []) == []


def test_warnings_and_errors_are_unexpected() -> None:
    text = record(logging.INFO, "serving /m") + record(logging.WARNING, "careful") \
        + record(logging.ERROR, "lookup: KeyError: 'x' (repeated)")
    found = unexpected(text, [])
    assert len(found) == 2
    assert found[0].endswith("WARNING careful")
    assert found[1].endswith("ERROR lookup: KeyError: 'x' (repeated)")


def test_a_traceback_belongs_to_its_record() -> None:
    text = record(logging.ERROR, "lookup failed", traceback=True) + record(logging.INFO, "next")
    found = unexpected(text, [])
    assert len(found) == 1
    assert "Traceback (most recent call last)" in found[0]
    assert found[0].splitlines()[-1] == "KeyError: 'planted'"


def test_an_allowed_pattern_matches_anywhere_in_the_record() -> None:
    text = record(logging.ERROR, "lookup failed", traceback=True) \
        + record(logging.ERROR, "rename failed")
    assert unexpected(text, [r"KeyError: 'planted'"]) == [record(logging.ERROR, "rename failed")
                                                         .decode().rstrip("\n")]
    assert unexpected(text, ["planted", "^overlayfuse.* rename"]) == []


def test_a_traceback_after_a_quiet_record_is_unexpected() -> None:
    text = record(logging.INFO, "closing", traceback=True)
    found = unexpected(text, [])
    assert len(found) == 1 and found[0].startswith("Traceback (most recent call last)")


def test_output_outside_the_log_format_is_unexpected() -> None:
    stray = b"Exception ignored in: <function Foo.__del__>\nValueError: x"
    for text in (stray + b"\n" + record(logging.INFO, "serving /m"),
                 record(logging.INFO, "serving /m") + stray + b"\n\n"
                 + record(logging.INFO, "unmounted /m")):
        assert unexpected(text, []) == [stray.decode()]
