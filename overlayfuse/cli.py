"""`overlayfuse` command: parse, check, mount, then hand the mounted connection to the daemon.

Everything that can be refused is done here, before the FUSE runtime (pyfuse3, trio, the
request handlers) is loaded: the command returns as soon as the mount exists, and the kernel
holds the first requests until the daemon has loaded the runtime and answers them. Bad input
is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import _signal      # signal itself converts to enums: importing enum cost ~10 ms of start-up
import os
import sys

from .errors import MountError, UsageError
from .fusedev import FuseMount, fuse_options, mount, unmount
from .layers import open_stack
from .options import MountOptions, parse_args
from .remount import remount

EXIT_USAGE = 2
EXIT_MOUNT = 1
DETACHED = b"D"
# What ends the daemon cleanly (it unmounts). Held back from the command's start until the
# main loop watches for them, so that one sent while the runtime loads still unmounts.
STOP_SIGNALS = {_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP}


def _fail(message: str, code: int) -> int:
    print(f"overlayfuse: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    # Stop signals are held while the command works, so that none can leave a mount without
    # its daemon, or end the command in a traceback: one that came before the mount ends the
    # command there (nothing is mounted yet); one that comes later is the daemon's, which
    # unmounts as soon as it serves.
    held = _signal.pthread_sigmask(_signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return _mount(sys.argv[1:] if argv is None else argv)
    finally:
        _end_if_stopped()
        _signal.pthread_sigmask(_signal.SIG_SETMASK, held)


def _mount(argv: list[str]) -> int:
    """Mount, then serve as the daemon (which never returns here); or the failure's status."""
    try:
        options = parse_args(argv)
    except UsageError as e:
        return _fail(f"error: {e} (see overlayfuse --help)", EXIT_USAGE)
    except MountError as e:
        return _fail(str(e), EXIT_MOUNT)
    if options.remount:
        try:
            remount(options)
        except MountError as e:
            return _fail(str(e), EXIT_MOUNT)
        return 0
    for warning in options.warnings:
        print(f"overlayfuse: warning: {warning}", file=sys.stderr)
    missing = _missing_runtime()
    if missing is not None:
        return _fail(f"cannot load the FUSE runtime: {missing} is not installed", EXIT_MOUNT)
    try:
        stack = open_stack(options)
        log_fd = open_log(options)
        _end_if_stopped()
        fuse = mount(stack.mountpoint, fuse_options(options, stack))
    except MountError as e:
        return _fail(str(e), EXIT_MOUNT)
    if not options.foreground:
        detach(fuse)
    from .daemon import run
    code = run(stack, options, fuse, log_fd)
    # The process ends here, at once: tearing the interpreter down would first free every
    # object of the daemon one by one (node table, caches, modules), which delays the exit
    # that `podman run --rm` and unmount scripts wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _end_if_stopped() -> None:
    """End the process by a stop signal that came while they were held, as its default
    action would have (SIGINT's Python handler would raise KeyboardInterrupt instead)."""
    pending = _signal.sigpending() & STOP_SIGNALS
    if pending:
        for signum in pending:
            _signal.signal(signum, _signal.SIG_DFL)
        sys.stdout.flush()
        sys.stderr.flush()
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, pending)


def _missing_runtime() -> str | None:
    """The first module of the FUSE runtime that no importer can find. Only looked for, not
    loaded: loading it is the daemon's, once the command has returned. (What
    importlib.util.find_spec does, without loading importlib.util.)"""
    for name in ("pyfuse3", "trio"):
        if name in sys.modules:
            found = sys.modules[name] is not None
        else:
            found = any(finder.find_spec(name, None) is not None for finder in sys.meta_path
                        if hasattr(finder, "find_spec"))
        if not found:
            return name
    return None


def open_log(options: MountOptions) -> int | None:
    """The log file, opened before the mount, so that one that cannot be opened is a clean
    error."""
    if options.log_file is None:
        return None
    try:
        return os.open(options.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                       0o666)
    except OSError as e:
        raise MountError(e.errno, "cannot open the log file", options.log_file) from None


def detach(fuse: FuseMount) -> None:
    """Fork the daemon and return in it: in its own session, in /, with stdin, stdout and
    stderr on /dev/null. The command exits 0 once the daemon is there; if it never gets
    there, the command unmounts and exits 1."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        verdict = os.read(read_end, 1)
        if verdict != DETACHED:
            unmount(fuse)
            _fail(f"the daemon for {fuse.mountpoint} did not start", EXIT_MOUNT)
        sys.stderr.flush()
        os._exit(0 if verdict == DETACHED else EXIT_MOUNT)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.write(write_end, DETACHED)
    os.close(write_end)


if __name__ == "__main__":
    raise SystemExit(main())
