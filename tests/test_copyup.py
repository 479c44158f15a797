"""Copy-up: what it preserves, that it is atomic, that it keeps st_ino, and that a large one
does not stall other requests."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from overlayfuse.compare.trees import describe
from overlayfuse import Overlay

BIG = 1 << 30


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for index in range(size // len(block)):
            chunk = block[:8] + index.to_bytes(8, "little") + block[16:]
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def _sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown lower files")
def test_copy_up_preserves_everything(make_stack, mount_ofs) -> None:
    stack = make_stack([{"dir/f": "file:data", "dir/sym": "symlink:../elsewhere",
                         "dir/fifo": "fifo", "dir/x": "file:x"}])
    lower = stack["lowers"][0]
    os.chown(lower / "dir/f", 1234, 5678)
    os.chmod(lower / "dir/f", 0o4750)
    os.utime(lower / "dir/f", ns=(1_000_000_123, 2_000_000_456))
    os.setxattr(lower / "dir/f", "user.colour", b"blue")
    os.setxattr(lower / "dir/f", "trusted.overlay.private", b"hidden")
    os.chown(lower / "dir/sym", 42, 43, follow_symlinks=False)
    os.chmod(lower / "dir", 0o751)
    os.setxattr(lower / "dir", "user.d", b"dirattr")
    before = {name: describe(lower / "dir" / name) for name in ("f", "sym", "fifo")}
    with mount_ofs(stack):
        merged = stack["merged"]
        os.utime(merged / "dir/f", ns=(1_000_000_123, 2_000_000_456))   # triggers copy-up
        os.chown(merged / "dir/sym", 42, 43, follow_symlinks=False)
        os.chmod(merged / "dir/fifo", 0o644)
        upper = stack["upper"]
        st = os.stat(upper / "dir/f")   # before anything reads it (relatime)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
        for name in ("f", "sym", "fifo"):
            assert describe(upper / "dir" / name) == before[name], name
        assert os.getxattr(upper / "dir/f", "user.colour") == b"blue"
        assert "trusted.overlay.private" not in os.listxattr(upper / "dir/f")
        assert stat.S_IMODE(os.stat(upper / "dir").st_mode) == 0o751
        assert os.getxattr(upper / "dir", "user.d") == b"dirattr"
        assert not (upper / "dir/x").exists()        # parents are copied up, not contents
        assert os.listdir(stack["work"] / "work") == []
    assert describe(lower / "dir/f")["sha"] == hashlib.sha256(b"data").hexdigest()


def test_st_ino_stays_across_copy_up_and_readers_see_new_data(make_stack, mount_ofs) -> None:
    stack = make_stack([{"f": "file:old contents"}])
    with mount_ofs(stack):
        path = stack["merged"] / "f"
        ino = os.stat(path).st_ino
        assert ino == os.stat(stack["lowers"][0] / "f").st_ino
        with open(path, "rb", buffering=0) as reader:
            assert reader.read(3) == b"old"
            with open(path, "r+b") as writer:
                writer.write(b"NEW")
            reader.seek(0)
            assert reader.read() == b"NEW contents"
        assert os.stat(path).st_ino == ino
        assert (stack["upper"] / "f").read_bytes() == b"NEW contents"
        # Another process sees the same.
        out = subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout
        assert out == b"NEW contents"


def test_large_copy_up_does_not_stall_other_requests(make_stack, mount_ofs) -> None:
    stack = make_stack([{"other": "file:o", "dir/a": "file:a"}])
    lower_sha = _write_random(stack["lowers"][0] / "big", BIG // 2)
    with mount_ofs(stack):
        merged = stack["merged"]
        done = threading.Event()

        def copy_up() -> None:
            with open(merged / "big", "ab"):
                pass
            done.set()

        worker = threading.Thread(target=copy_up)
        worker.start()
        work = stack["work"] / "work"
        while not done.is_set() and not any(work.iterdir()):
            time.sleep(0.001)
        served_during_copy = 0
        while not done.is_set():
            os.stat(merged / "dir/a")
            os.listdir(merged / "dir")
            (merged / "other").read_bytes()
            if not done.is_set():
                served_during_copy += 1
        worker.join()
        assert served_during_copy > 0
        assert _sha(merged / "big") == lower_sha
    assert _sha(stack["lowers"][0] / "big") == lower_sha


def test_sigkill_during_copy_up_leaves_lower_version(make_stack, tmp_path: Path) -> None:
    stack = make_stack([{"small": "file:s"}])
    lower_sha = _write_random(stack["lowers"][0] / "big", BIG)
    with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"]) as overlay:
        daemon = overlay.process
        assert daemon is not None
        client = subprocess.Popen([sys.executable, "-c",
                                   f"open({str(stack['merged'] / 'big')!r}, 'ab')"],
                                  stderr=subprocess.DEVNULL)
        work = stack["work"] / "work"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            staged = list(work.iterdir())
            if staged and staged[0].stat().st_size > 0:
                break
            time.sleep(0.002)
        assert staged, "copy-up never started"
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        client.wait(timeout=30)
    assert not (stack["upper"] / "big").exists()
    with Overlay(stack["lowers"], stack["upper"], stack["work"], stack["merged"]):
        assert os.listdir(stack["work"] / "work") == []
        assert _sha(stack["merged"] / "big") == lower_sha
    assert _sha(stack["lowers"][0] / "big") == lower_sha
