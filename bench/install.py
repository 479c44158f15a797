"""The overlayfuse the benchmark runs: this checkout installed the way users install it, so that
the mount command and podman's mount program are timed as users run them.

`scripts/setup` installs a plain copy (`pip install .`, not editable) into a venv on an
interpreter every user can run, with the patched pyfuse3. The `.venv` command is editable: its
import finder loads `pathlib`, `importlib.util` and `re` at start-up, and its interpreter may be
one only root can run. So the benchmark makes the same kind of copy of this checkout, in a venv
of its own under /var/tmp, and reinstalls only the package when the checkout's code changed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOT = Path("/var/tmp/overlayfuse-bench-install")
SYSTEM_PYTHON = "/usr/bin/python3"


class InstallError(RuntimeError):
    pass


def _runs_for_everyone(python: str) -> bool:
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return True     # no other user to ask for
    done = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", ""],
                          capture_output=True)
    return done.returncode == 0


def interpreter() -> str:
    """The interpreter scripts/setup would install on: this one if every user may run it,
    else the system's."""
    base = getattr(sys, "_base_executable", sys.executable)
    return base if _runs_for_everyone(base) else SYSTEM_PYTHON


def code_digest() -> str:
    """What the installed copy is made of: the package's files, the command and the
    project file, and the pyfuse3 patches."""
    digest = hashlib.sha256()
    files = [REPO / "pyproject.toml", REPO / "bin" / "overlayfuse",
             *sorted((REPO / "overlayfuse").rglob("*.py")),
             *sorted((REPO / "patches" / "pyfuse3").glob("*.patch"))]
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        errors = "\n".join(line for line in done.stderr.splitlines()
                           if not line.startswith("WARNING: Location 'file"))
        raise InstallError(f"{' '.join(argv)} failed: {errors[-2000:]}")
    return done.stdout


def installed_command(log: Callable[[str], None], root: Path = ROOT) -> Path:
    """The `overlayfuse` command of a non-editable install of this checkout, made or brought
    up to date."""
    python = interpreter()
    venv = root / hashlib.sha256(f"{REPO}\0{python}".encode()).hexdigest()[:12]
    stamp = venv / ".overlayfuse-bench"
    want = code_digest()
    have = stamp.read_text() if stamp.exists() else None
    command = venv / "bin" / "overlayfuse"
    if have == want and command.exists():
        return command
    old_mask = os.umask(0o022)      # readable by the podman benchmark's user
    try:
        root.mkdir(parents=True, exist_ok=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
               "--disable-pip-version-check"]
        if have is None or not command.exists():
            log(f"installing this checkout (not editable) into {venv}")
            _run([python, "-m", "venv", "--clear", str(venv)])
            _run([*pip, str(REPO)])
        else:
            log(f"reinstalling this checkout's code into {venv}")
            _run([*pip, "--no-deps", "--force-reinstall", str(REPO)])
        wheel = _run([str(REPO / "scripts" / "pyfuse3-wheel"), str(venv / "bin" / "python")])
        _run([*pip, "--no-deps", "--force-reinstall", wheel.strip()])
    finally:
        os.umask(old_mask)
    stamp.write_text(want)
    return command


def python_version(command: Path) -> str:
    """The version of the interpreter an installed command runs on."""
    return _run([str(command.parent / "python"), "-c",
                 "import platform; print(platform.python_version())"]).strip()
