"""A separate project that depends on overlayfuse, as a user would have it: a throw-away
package with its own pyproject.toml, installed with pip into a fresh virtualenv (overlayfuse
from a wheel built from this checkout, offline), whose tests use the pytest plugin's
`overlay` fixture and the overlayfuse/kernel parametrisation. They run as root and as a
non-root user.

To stay offline and quick, the new virtualenv sees copies of the packages overlayfuse and
pytest need (pyfuse3, trio, pytest and theirs) through a .pth file, as a virtualenv with
system site-packages would; pip resolves and installs the project and overlayfuse itself."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from test_unprivileged import as_user, user_env  # noqa: F401  (user_env: a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a test user")
CHECKOUT = Path(__file__).resolve().parents[1]

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "layertool"
version = "1.0"
dependencies = ["overlayfuse"]

[project.optional-dependencies]
test = ["pytest"]
"""

LAYERTOOL = '''\
"""Turns a tree into the next version of itself: the code under test."""

from pathlib import Path


def upgrade(root: Path) -> None:
    (root / "etc/app.conf").write_text("version=2\\n")
    (root / "etc/old.conf").unlink()
    (root / "var/cache").mkdir(parents=True, exist_ok=True)
'''

PROJECT_TESTS = '''\
import os
from pathlib import Path

import pytest

from layertool import upgrade


def base_layer(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/app.conf").write_text("version=1\\n")
    (root / "etc/old.conf").write_text("old\\n")
    return root


def test_upgrade_writes_only_to_the_upper_layer(overlay, tmp_path):
    lower = base_layer(tmp_path / "lower")
    upper = tmp_path / "upper"
    upper.mkdir()
    merged = overlay([lower], upper).merged
    upgrade(merged)
    assert (merged / "etc/app.conf").read_text() == "version=2\\n"
    assert sorted(os.listdir(merged / "etc")) == ["app.conf"]
    assert (lower / "etc/old.conf").read_text() == "old\\n"
    assert (upper / "etc/app.conf").read_text() == "version=2\\n"


def test_a_read_only_overlay_refuses_the_upgrade(overlay, tmp_path):
    merged = overlay([base_layer(tmp_path / "lower")]).merged
    with pytest.raises(OSError):
        upgrade(merged)


@pytest.mark.overlayfuse_and_kernel
def test_upgrade_leaves_the_same_tree_on_both(overlay, overlay_kind, tmp_path):
    lower = base_layer(tmp_path / "lower")
    upper = tmp_path / "upper"
    upper.mkdir()
    merged = overlay([lower], upper).merged
    upgrade(merged)
    seen = sorted(str(p.relative_to(merged)) for p in merged.rglob("*"))
    assert seen == ["etc", "etc/app.conf", "var", "var/cache"], overlay_kind
'''


def _requirements(name: str, seen: set[str]) -> None:
    """`name` and every distribution it needs here (without extras), recursively."""
    key = name.lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    for line in importlib.metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            _requirements(requirement.name, seen)


def _copy_distributions(names: set[str], target: Path) -> None:
    """Copy each installed distribution's files (its dist-info too, so that pip sees it
    installed) into `target`."""
    for name in names:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue
            source = Path(dist.locate_file(file))
            if source.is_file():
                (target / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / file)


def _build_wheel(source: Path, wheels: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, cwd=source)


def _summary(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def project(user_env: dict) -> Iterator[dict]:  # noqa: F811
    # Not under pytest's base temp dir: another pytest session starting meanwhile makes
    # that private again.
    base = Path(tempfile.mkdtemp(prefix="overlayfuse-user-project-"))
    try:
        os.chmod(base, 0o755)
        yield _make_project(base, user_env["python"])
    finally:
        shutil.rmtree(base)


def _make_project(base: Path, python: str) -> dict:
    # overlayfuse's wheel, from a copy of the checkout (a build writes into its source).
    source = base / "overlayfuse-src"
    shutil.copytree(CHECKOUT, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "tests", "bench", "docs"))
    wheels = base / "wheels"
    _build_wheel(source, wheels)
    project = base / "layertool"
    (project / "layertool").mkdir(parents=True)
    (project / "tests").mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    (project / "layertool/__init__.py").write_text(LAYERTOOL)
    (project / "tests/test_upgrade.py").write_text(PROJECT_TESTS)
    _build_wheel(project, wheels)

    needed: set[str] = set()
    _requirements("pyfuse3", needed)
    _requirements("trio", needed)
    _requirements("pytest", needed)
    deps = base / "deps"
    _copy_distributions(needed, deps)
    venv = base / "venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin/python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(f"{deps}\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"),
                              "install", "--no-index", "--find-links", str(wheels),
                              "layertool[test]"], capture_output=True, text=True)
    assert install.returncode == 0, install.stdout + install.stderr
    return {"venv": venv, "dir": project, "site": site, "install": install.stdout}


def test_pip_install_pulls_only_pyfuse3_and_trio(project: dict) -> None:
    requires = subprocess.run(
        [str(project["venv"] / "bin/python"), "-c",
         "import importlib.metadata as m; print('\\n'.join(m.requires('overlayfuse')))"],
        check=True, capture_output=True, text=True).stdout.splitlines()
    plain = sorted(r.split(">")[0].split("=")[0] for r in requires if "extra ==" not in r)
    assert plain == ["pyfuse3", "trio"]
    assert any("hypothesis" in r and 'extra == "compare"' in r for r in requires), requires
    installed = list(project["site"].glob("overlayfuse-*.dist-info"))
    assert installed, "overlayfuse was not installed into the new virtualenv"
    assert not (project["site"] / "hypothesis").exists()
    assert (project["site"] / "overlayfuse/py.typed").exists()     # the API is typed
    compare = subprocess.run([str(project["venv"] / "bin/overlayfuse-compare")],
                             capture_output=True, text=True)
    assert (compare.returncode, compare.stderr) == (
        2, "overlayfuse-compare: needs hypothesis; install overlayfuse[compare]\n")


def test_the_project_tests_pass_as_root(project: dict) -> None:
    done = subprocess.run([str(project["venv"] / "bin/python"), "-m", "pytest", "-rs",
                           "-p", "no:cacheprovider", "tests"], cwd=project["dir"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^plugins: .*overlayfuse", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"\b4 passed\b", _summary(done.stdout)), done.stdout


def test_the_project_tests_pass_as_a_user(project: dict, user_env: dict) -> None:  # noqa: F811
    done = as_user(user_env, "env", f"--chdir={project['dir']}", f"HOME={project['dir'].parent}",
                   str(project["venv"] / "bin/python"), "-m", "pytest",
                   "-rs", "-p", "no:cacheprovider", "tests", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = _summary(done.stdout)
    assert re.search(r"\b3 passed\b", summary) and re.search(r"\b1 skipped\b", summary), \
        done.stdout
    # The kernel run is skipped with the kernel's own refusal as the reason.
    assert re.search(r"SKIPPED .*kernel overlayfs cannot be mounted here: .*", done.stdout), \
        done.stdout
