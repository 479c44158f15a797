"""overlayfuse as podman's overlay mount program: run, build (a layer that deletes files of
a lower layer), diff and commit give the same results as with fuse-overlayfs. The image is
made offline from busybox-static; the storage is thrown away afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from overlayfuse import mounts
from podman_diff import stable_changes

PACKAGES = {"podman": "podman", "runc": "runc", "busybox": "busybox-static"}
# This machine's quirks (shared/spec/podman-contract.md): crun rejects the cgroup layout, no
# CAP_SYS_RESOURCE for the default ulimits, no systemd for cgroups or events.
RUN_OPTIONS = ["--runtime", "runc", "--network", "none", "--ulimit", "nofile=20000:20000",
               "--ulimit", "nproc=4096:4096"]
CONTAINERFILE = """FROM localhost/bb
RUN echo one > /f1 && echo two > /f2 && mkdir /d && echo in > /d/in
RUN rm /f1 && rm -r /d && mkdir /d && echo new > /d/new
"""
APPLETS = ("sh", "ls", "cat", "echo", "rm", "mkdir", "touch", "find", "sort")


def _install_missing() -> str | None:
    """apt-get what is missing; the reason it cannot be had, or None."""
    missing = [pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None]
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"needs {', '.join(missing)} (installing them needs root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True,
                          text=True, env=env)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        done = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True,
                              text=True, env=env)
    if done.returncode != 0:
        return f"cannot install {', '.join(missing)}: {done.stderr.strip().splitlines()[-1]}"
    return None


@pytest.fixture(scope="module")
def podman_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    reason = _install_missing()
    if reason is not None:
        pytest.skip(reason)


class Podman:
    """podman with a throw-away storage root and a chosen mount program."""

    def __init__(self, base: Path, mount_program: str | None) -> None:
        self.base = base
        # podman refuses a runroot path longer than 50 characters
        self.runroot = Path(tempfile.mkdtemp(prefix="ofs-podman-", dir="/tmp"))
        self.prefix = ["podman", "--root", str(base / "root"), "--runroot", str(self.runroot),
                       "--storage-driver", "overlay",
                       "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        if mount_program is not None:   # None: podman mounts kernel overlayfs itself
            self.prefix += ["--storage-opt", f"overlay.mount_program={mount_program}"]

    def __call__(self, *args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run([*self.prefix, *args], input=stdin, capture_output=True,
                              timeout=300)
        assert done.returncode == 0, (args, done.stderr.decode(errors="replace"))
        return done.stdout.decode()

    def clean(self) -> None:
        for args in (["rm", "-a", "-f"], ["rmi", "-a", "-f"]):
            subprocess.run([*self.prefix, *args], capture_output=True, timeout=300)
        with open("/proc/self/mountinfo") as mountinfo:
            left = [line.split()[4] for line in mountinfo
                    if line.split()[4].startswith((str(self.base), str(self.runroot)))]
        for path in sorted(left, reverse=True):
            mounts.unmount(path)
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)


def _busybox_tarball(base: Path) -> bytes:
    rootfs = base / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for name in ("tmp", "etc"):
        (rootfs / name).mkdir()
    shutil.copy(shutil.which("busybox") or "/bin/busybox", rootfs / "bin/busybox")
    for applet in APPLETS:
        os.symlink("busybox", rootfs / "bin" / applet)
    return subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True,
                          check=True).stdout


def _scenario(podman: Podman, workdir: Path) -> dict[str, str]:
    """run, build, diff, commit: what each shows."""
    podman("import", "-", "localhost/bb:latest", stdin=_busybox_tarball(workdir))
    seen = {"run": podman("run", "--rm", *RUN_OPTIONS, "localhost/bb", "sh", "-c",
                          "echo hi > /tmp/x && cat /tmp/x && ls /bin | sort")}
    (workdir / "Containerfile").write_text(CONTAINERFILE)
    podman("build", *RUN_OPTIONS[:4], "-t", "localhost/bb2", "-f",
           str(workdir / "Containerfile"), str(workdir))
    seen["build"] = podman("run", "--rm", *RUN_OPTIONS, "localhost/bb2", "sh", "-c",
                           "ls / | sort; ls /d; cat /f2; ls /f1 2>&1 || true")
    podman("run", "--name", "changed", *RUN_OPTIONS, "localhost/bb2", "sh", "-c",
           "echo x > /newfile && rm /f2 && echo more >> /d/new && mkdir -p /tmp/t")
    seen["diff"] = stable_changes(podman("diff", "changed"))
    podman("commit", "changed", "localhost/bb3")
    seen["commit"] = podman("run", "--rm", *RUN_OPTIONS, "localhost/bb3", "sh", "-c",
                            "ls / | sort; cat /d/new /newfile; ls /f2 2>&1 || true")
    return seen


def test_podman_with_overlayfuse_matches_kernel_overlayfs(podman_ready: None,
                                                          tmp_path: Path) -> None:
    """The same scenario with podman's own kernel overlay mounts (the reference), with
    overlayfuse as the mount program, and with fuse-overlayfs."""
    overlayfuse = shutil.which("overlayfuse") or str(Path(mounts.__file__).parents[1]
                                                     / ".venv/bin/overlayfuse")
    results = {}
    for name, program in (("kernel", None), ("overlayfuse", overlayfuse),
                          ("fuse-overlayfs", shutil.which("fuse-overlayfs"))):
        if name == "fuse-overlayfs" and program is None:
            continue
        base = tmp_path / name
        base.mkdir()
        podman = Podman(base, program)
        try:
            results[name] = _scenario(podman, base)
        finally:
            podman.clean()
        with open("/proc/self/mountinfo") as mountinfo:
            assert str(base) not in mountinfo.read()
    ours = results["overlayfuse"]
    assert ours["run"].split()[0] == "hi"
    assert ours["build"].split()[:12] == ["bin", "d", "dev", "etc", "f2", "proc", "run", "sys",
                                          "tmp", "new", "two", "ls:"]
    assert "D /f2" in ours["diff"] and "A /newfile" in ours["diff"]
    assert "more" in ours["commit"] and "x" in ours["commit"].split()
    assert ours == results["kernel"]
    # fuse-overlayfs 1.10 differs on the build (a deleted-and-recreated directory shows the
    # deleted file again); docs/podman.md records it. What it shows is not asserted here.
