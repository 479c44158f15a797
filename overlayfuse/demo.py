"""A guided tour: build a 3-layer stack in a temporary directory, mount it with overlayfuse
(daemonizing, as podman or mount(8) would), and show step by step how the merged view is made
and what writes leave in the upper directory.

    python -m overlayfuse.demo          (scripts/demo sets everything up and runs this)

Everything is removed at the end, also on an error or Ctrl-C: the mount is undone with
`fusermount3 -u`, the daemon is waited for, and the temporary directory is deleted.
Exit status 0 on success; otherwise one line on stderr and a non-zero status.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .mounts import is_mounted

MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0
OPAQUE = "trusted.overlay.opaque" if os.geteuid() == 0 else "user.overlay.opaque"
MARKER_PREFIXES = ("trusted.overlay.", "user.overlay.")


class DemoError(Exception):
    """Something did not behave as the demo expects: reported as one line."""


class Interrupted(BaseException):
    """SIGTERM/SIGHUP: unwind like Ctrl-C, so that the clean-up runs."""


# ---- output -------------------------------------------------------------------------------

def heading(text: str) -> None:
    print()
    print(f"== {text} " + "=" * max(0, 74 - len(text)))


def say(text: str = "") -> None:
    print(f"   {text}" if text else "")


def check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoError(f"unexpected result: {what}")


def markers(path: Path) -> dict[str, bytes]:
    """The overlay marker xattrs on `path` (not following a symlink), by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {name: os.getxattr(path, name, follow_symlinks=False)
            for name in sorted(names) if name.startswith(MARKER_PREFIXES)}


def marker_meaning(name: str, value: bytes) -> str:
    """What one marker says, for a reader: its values are flags, paths or binary handles,
    so each kind is shown by its meaning, never as raw bytes."""
    kind = name.rsplit(".", 1)[-1]
    if kind == "opaque" and value == b"y":
        return f"<- opaque dir ({name}=y): hides the dirs below it"
    if kind == "origin":
        return (f"<- copied up ({name}: a {len(value)}-byte file handle of the lower "
                "original, which keeps the inode number the same)")
    if kind == "impure":
        return f"<- impure dir ({name}): holds copied-up or renamed entries"
    if kind == "redirect":
        return f"<- renamed dir ({name}: merged with '{value.decode(errors='replace')}' below)"
    if kind == "metacopy":
        return f"<- metadata-only copy ({name}: the data is still read from below)"
    return f"<- overlay marker {name} ({len(value)} bytes)"


def _content(path: Path, st: os.stat_result) -> str:
    if not stat.S_ISREG(st.st_mode) or st.st_size > 60 or not st.st_mode & 0o444:
        return ""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return repr(data.decode(errors="replace")) if data else ""


def describe(path: Path, st: os.stat_result, raw: bool) -> str:
    """One `ls -l`-like line: mode, size (or device numbers), name, and what it means."""
    name = path.name
    notes: list[str] = []
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        size = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
        if raw and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            notes.append("<- whiteout (chardev 0/0): hides this name in the layers below")
    elif stat.S_ISDIR(st.st_mode):
        size = "-"
        name += "/"
    else:
        size = str(st.st_size)
    if stat.S_ISLNK(st.st_mode):
        name += f" -> {os.readlink(path)}"
    if raw and path.name == ".wh..wh..opq":
        notes.append("<- OCI opaque marker: this dir hides the dirs below it")
    elif raw and path.name.startswith(".wh."):
        notes.append(f"<- OCI whiteout: hides '{path.name[4:]}' in the layers below")
    if raw:
        notes.extend(marker_meaning(name, value) for name, value in markers(path).items())
    content = _content(path, st)
    if content:
        notes.insert(0, content)
    return f"{stat.filemode(st.st_mode)} {size:>5}  {name:<22} {' '.join(notes)}".rstrip()


def show_tree(root: Path, raw: bool, indent: str = "   ") -> None:
    """List `root` recursively, sorted, one line per entry. `raw` explains overlay markers
    (for a layer); without it the listing is what any program sees (for the mount)."""
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    if not entries and indent == "   ":
        say("(empty)")
    for entry in entries:
        path = Path(entry.path)
        st = os.lstat(path)
        print(indent + describe(path, st, raw))
        if stat.S_ISDIR(st.st_mode):
            show_tree(path, raw, indent + "    ")


def show_layer(title: str, root: Path) -> None:
    say(f"{title}  ({root})")
    show_tree(root, raw=True, indent="     ")
    if not any(root.iterdir()):
        say("  (empty)")


# ---- building the stack -------------------------------------------------------------------

def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def build_layers(base: Path) -> dict[str, Path]:
    paths = {name: base / name for name in ("lower1", "lower2", "upper", "work", "merged")}
    for path in paths.values():
        path.mkdir()
    top, bottom = paths["lower1"], paths["lower2"]

    # The bottom lower: an "image" of sorts.
    write(bottom / "common.txt", "version from lower2\n")
    write(bottom / "deleted.txt", "hidden by a chardev whiteout\n")
    write(bottom / "oci-deleted.txt", "hidden by an OCI whiteout\n")
    write(bottom / "config" / "a.conf", "a=1\n")
    write(bottom / "config" / "b.conf", "b=2\n")
    write(bottom / "data" / "old.txt", "old data\n")
    write(bottom / "notes.txt", "first line\n")
    write(bottom / "remove-me.txt", "bye\n")
    write(bottom / "cache" / "item1", "cached 1\n")
    write(bottom / "cache" / "item2", "cached 2\n")

    # The top lower: changes on top of it, in both whiteout conventions.
    write(top / "common.txt", "version from lower1\n")
    os.mknod(top / "deleted.txt", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    write(top / ".wh.oci-deleted.txt", "", mode=0o000)
    write(top / "config" / "c.conf", "c=3\n")
    os.setxattr(top / "config", OPAQUE, b"y")
    write(top / "data" / "new.txt", "new data\n")
    return paths


# ---- mounting -----------------------------------------------------------------------------

def overlayfuse_command() -> list[str]:
    script = Path(sys.executable).parent / "overlayfuse"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "overlayfuse"]


def mount(paths: dict[str, Path]) -> None:
    options = (f"lowerdir={paths['lower1']}:{paths['lower2']},"
               f"upperdir={paths['upper']},workdir={paths['work']}")
    command = [*overlayfuse_command(), "-o", options, str(paths["merged"])]
    say("$ overlayfuse -o lowerdir=lower1:lower2,upperdir=upper,workdir=work merged")
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, timeout=MOUNT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise DemoError(f"overlayfuse did not return within {MOUNT_TIMEOUT:.0f} s") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        raise DemoError(f"mount failed: {detail}")
    check(is_mounted(paths["merged"]), "overlayfuse returned 0 but nothing is mounted")
    say("The command returned as soon as the mount was live; a daemon now serves it.")


def daemon_pids(merged: Path) -> list[int]:
    """The overlayfuse processes serving `merged` (their last argument is its path)."""
    target = os.fsencode(str(merged))
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[-1] == b"":
            argv.pop()
        if len(argv) >= 2 and argv[-1] == target and any(b"overlayfuse" in a for a in argv[:-1]):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if _alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def unmount_and_clean(base: Path, merged: Path, quiet: bool) -> list[str]:
    """Undo everything; returns what could not be undone (empty when all is clean)."""
    problems: list[str] = []
    pids = daemon_pids(merged)
    if is_mounted(merged):
        if not quiet:
            say("$ fusermount3 -u merged")
        done = subprocess.run(["fusermount3", "-u", str(merged)], capture_output=True, text=True)
        if done.returncode != 0 and is_mounted(merged):
            # Busy (a shell sitting in it?): detach it lazily rather than leave it behind.
            subprocess.run(["fusermount3", "-u", "-z", str(merged)], capture_output=True)
        if is_mounted(merged):
            problems.append(f"{merged} is still mounted")
    left = _wait_gone(pids, EXIT_TIMEOUT)
    if left:
        # These are our own daemons (they serve our private temporary path): stop them.
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        left = _wait_gone(left, EXIT_TIMEOUT)
        problems.append("the daemon did not exit on unmount" + (
            f" (still running: {left})" if left else " (stopped with SIGTERM)"))
    elif pids and not quiet:
        say(f"The daemon (pid {', '.join(map(str, pids))}) exited by itself after the unmount.")
    if is_mounted(merged):
        problems.append(f"left {base} in place because {merged} is still mounted")
    else:
        shutil.rmtree(base, ignore_errors=True)
        if base.exists():
            problems.append(f"could not remove {base}")
        elif not quiet:
            say(f"Removed {base}.")
    return problems


# ---- the tour -----------------------------------------------------------------------------

def tour(paths: dict[str, Path]) -> None:
    lower1, lower2, upper, merged = (paths[n] for n in ("lower1", "lower2", "upper", "merged"))

    heading("1. The layers")
    say("Three directories, stacked top to bottom: upper (writable), lower1, lower2.")
    say("lower1 holds changes on top of lower2, written the way container images store them.")
    say()
    show_layer("lower2 (bottom)", lower2)
    say()
    show_layer("lower1 (top lower)", lower1)
    say()
    show_layer("upper", upper)

    heading("2. Mount")
    mount(paths)

    heading("3. The merged view (what every program sees in merged/)")
    show_tree(merged, raw=False)
    say()
    say("Precedence: common.txt is in both lowers; the topmost layer wins:")
    text = (merged / "common.txt").read_text()
    say(f"  cat merged/common.txt  ->  {text!r}")
    check(text == "version from lower1\n", "common.txt should come from lower1")
    say("Whiteout: lower1/deleted.txt is a chardev 0/0, so lower2/deleted.txt is hidden:")
    say(f"  exists merged/deleted.txt  ->  {os.path.lexists(merged / 'deleted.txt')}")
    check(not os.path.lexists(merged / "deleted.txt"), "deleted.txt should be whited out")
    say("OCI whiteout: lower1/.wh.oci-deleted.txt hides lower2/oci-deleted.txt, and the")
    say(".wh. file itself is not shown either (kernel overlayfs ignores this convention;")
    say("podman writes it into committed image layers):")
    names = sorted(os.listdir(merged))
    say(f"  ls merged  ->  {' '.join(names)}")
    check("oci-deleted.txt" not in names and ".wh.oci-deleted.txt" not in names,
          "the OCI whiteout should hide oci-deleted.txt and itself")
    say(f"Opaque dir: lower1/config has {OPAQUE}=y, so lower2/config's files are hidden:")
    config = sorted(os.listdir(merged / "config"))
    say(f"  ls merged/config  ->  {' '.join(config)}")
    check(config == ["c.conf"], "merged/config should hold only c.conf")
    say("Merged dir: data/ is in both lowers and not opaque, so its contents are combined:")
    data = sorted(os.listdir(merged / "data"))
    say(f"  ls merged/data  ->  {' '.join(data)}")
    check(data == ["new.txt", "old.txt"], "merged/data should hold new.txt and old.txt")

    heading("4. Copy-up: writing to a lower file")
    ino_before = os.lstat(merged / "notes.txt").st_ino
    say("$ echo 'second line' >> merged/notes.txt")
    with open(merged / "notes.txt", "a") as f:
        f.write("second line\n")
    say("The first open for writing copied notes.txt up: built in work/work, then renamed")
    say("into upper/ in one step, so no program ever sees a half-copied file.")
    say(f"  merged/notes.txt  ->  {(merged / 'notes.txt').read_text()!r}")
    say(f"  upper/notes.txt   ->  {(upper / 'notes.txt').read_text()!r}")
    say(f"  lower2/notes.txt  ->  {(lower2 / 'notes.txt').read_text()!r}   (lower layers "
        "are never modified)")
    check((upper / "notes.txt").read_text() == "first line\nsecond line\n",
          "upper/notes.txt should hold both lines")
    check((lower2 / "notes.txt").read_text() == "first line\n", "lower2/notes.txt changed")
    ino_after = os.lstat(merged / "notes.txt").st_ino
    say(f"  inode number in the mount: {ino_before} before, {ino_after} after the copy-up")
    check(ino_before == ino_after, "st_ino should stay the same across a copy-up")

    heading("5. Deleting a lower file leaves a whiteout in upper")
    say("$ rm merged/remove-me.txt")
    os.unlink(merged / "remove-me.txt")
    st = os.lstat(upper / "remove-me.txt")
    print("     upper: " + describe(upper / "remove-me.txt", st, raw=True))
    check(stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, "upper/remove-me.txt is no whiteout")
    say(f"  exists merged/remove-me.txt  ->  {os.path.lexists(merged / 'remove-me.txt')}")
    say(f"  exists lower2/remove-me.txt  ->  {os.path.lexists(lower2 / 'remove-me.txt')}")
    check(not os.path.lexists(merged / "remove-me.txt"), "remove-me.txt is still visible")

    heading("6. mkdir over a whiteout makes an opaque dir")
    say("$ rm -r merged/cache && mkdir merged/cache")
    shutil.rmtree(merged / "cache")
    check(stat.S_ISCHR(os.lstat(upper / "cache").st_mode), "rm -r should leave a whiteout")
    say("  after rm -r:  upper: " + describe(upper / "cache", os.lstat(upper / "cache"),
                                              raw=True))
    os.mkdir(merged / "cache")
    say("  after mkdir:  upper: " + describe(upper / "cache", os.lstat(upper / "cache"),
                                              raw=True))
    cache = os.listdir(merged / "cache")
    say(f"  ls merged/cache  ->  {' '.join(cache) or '(empty)'}   although lower2/cache "
        f"still holds {' '.join(sorted(os.listdir(lower2 / 'cache')))}")
    check(cache == [], "the new merged/cache should be empty")
    check(markers(upper / "cache").get(OPAQUE) == b"y", "upper/cache should be marked opaque")

    heading("7. The upper dir now (kernel overlayfs reads this format too)")
    show_layer("upper", upper)
    say()
    show_layer("lower2 (unchanged)", lower2)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def main() -> int:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)
    if not Path("/dev/fuse").exists():
        print("overlayfuse demo: /dev/fuse is missing (load the fuse module)", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="overlayfuse-demo-")).resolve()
    print(f"overlayfuse demo in {base}")
    status = 1
    failure = None
    try:
        paths = build_layers(base)
        tour(paths)
        heading("8. Unmount and clean up")
        status = 0
    except KeyboardInterrupt:
        failure, status = "interrupted", 130
    except Interrupted as e:
        failure, status = f"stopped by signal {e.args[0]}", 128 + e.args[0]
    except DemoError as e:
        failure = str(e)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        failure = f"{where}{os.strerror(e.errno)}" if e.errno else str(e)
    except Exception as e:  # noqa: BLE001 - one line, never a traceback
        failure = f"{type(e).__name__}: {e}"
    finally:
        # Clean up even if a second Ctrl-C arrives while we do.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        problems = unmount_and_clean(base, base / "merged", quiet=status != 0)
    if failure is None and problems:
        failure, status = "; ".join(problems), 1
    elif problems:
        failure += " (and " + "; ".join(problems) + ")"
    if failure is not None:
        sys.stdout.flush()
        print(f"overlayfuse demo: {failure}", file=sys.stderr)
        return status or 1
    print()
    print("Done: everything was unmounted and removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
