"""docs/api.md runs as written: each Python block that defines a `test_` function is a test
file that passes under pytest (the first such block is the one users copy whole), and each
other Python block is a script that exits 0 and prints what the page shows after it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_fuse

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
PRINTS = re.compile(r"\A\s*prints\s*\Z")


def _python_blocks() -> list[tuple[str, str | None]]:
    """(code, the output shown right after it, if any) for each ```python block."""
    text = API_DOC.read_text()
    blocks = list(BLOCK.finditer(text))
    found = []
    for index, block in enumerate(blocks):
        if block.group(1) != "python":
            continue
        shown = None
        if index + 1 < len(blocks):
            after = blocks[index + 1]
            if after.group(1) == "" and PRINTS.match(text[block.end():after.start()]):
                shown = after.group(2)
        found.append((block.group(2), shown))
    return found


BLOCKS = _python_blocks()
TEST_FILES = [code for code, _ in BLOCKS if re.search(r"^def test_", code, re.MULTILINE)]
SCRIPTS = [(code, shown) for code, shown in BLOCKS if code not in TEST_FILES]


def test_the_page_has_a_test_file_and_scripts_with_their_output() -> None:
    assert TEST_FILES and SCRIPTS
    assert sum(shown is not None for _, shown in SCRIPTS) >= 2


@needs_fuse
@pytest.mark.parametrize("code", TEST_FILES, ids=[f"test-file-{i}" for i in range(len(TEST_FILES))])
def test_the_test_file_passes(code: str, pytester: pytest.Pytester) -> None:
    tests = len(re.findall(r"^def test_", code, re.MULTILINE))
    both = len(re.findall(r"^@pytest.mark.overlayfuse_and_kernel", code, re.MULTILINE))
    pytester.makepyfile(test_copied=code)
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    outcomes = result.parseoutcomes()
    # Each marked test runs twice; its kernel run may be skipped, never fail.
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == tests + both
    assert outcomes.get("passed", 0) >= tests


@pytest.mark.parametrize("code,shown", [
    # (The API mounts in a `with` block: a script without one mounts nothing.)
    pytest.param(code, shown, id=f"script-{i}",
                 marks=[needs_fuse] if re.search(r"^\s*with ", code, re.MULTILINE) else [])
    for i, (code, shown) in enumerate(SCRIPTS)])
def test_the_script_runs(code: str, shown: str | None, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if shown is not None:
        assert done.stdout == shown
