"""Mounting, daemonizing and the main loop.

pyfuse3.init() mounts before any fork, so mount errors still reach the terminal. In the
background case the command then forks twice; the daemon detaches from stdio and reports
"serving" over a pipe, and only then does the command exit 0 (podman waits for exactly this).
"""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import signal
import sys

import pyfuse3
import trio

from .errors import MountError
from .layers import Stack
from .options import MountOptions

log = logging.getLogger("overlayfuse")
READY = b"R"


def fuse_options(options: MountOptions, stack: Stack) -> set[str]:
    """Our defaults, then the user's options (a user's fsname= or subtype= replaces ours)."""
    fsname = options.source.replace(",", "_").replace("\\", "_")
    chosen = {"default_permissions", f"fsname={fsname}", "subtype=overlayfuse"}
    if os.geteuid() == 0:
        # Like kernel overlayfs: usable by every user, and device nodes and setuid programs
        # work (FUSE's defaults are nodev,nosuid and only the mounter).
        chosen.update({"allow_other", "dev", "suid"})
    for option in options.fuse_options:
        key = option.partition("=")[0]
        opposite = {"dev": "nodev", "nodev": "dev", "suid": "nosuid", "nosuid": "suid"}.get(key)
        chosen = {c for c in chosen if c.partition("=")[0] not in (key, opposite)}
        chosen.add(option)
    if stack.read_only:
        chosen.add("ro")
    return chosen


def log_handler(options: MountOptions) -> logging.Handler:
    """Made before the mount, so that a log file that cannot be opened is a clean error."""
    handler: logging.Handler
    if options.log_file is not None:
        try:
            handler = logging.FileHandler(options.log_file)
        except OSError as e:
            raise MountError(e.errno or errno.EIO, "cannot open the log file",
                             options.log_file) from None
    elif options.foreground:
        handler = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("overlayfuse[%(process)d]: %(levelname)s %(message)s"))
    return handler


def setup_logging(handler: logging.Handler, debug: bool) -> None:
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def detach() -> int:
    """Fork into the background. Returns, in the daemon, the fd to report readiness on; the
    original process never returns: it exits with the daemon's verdict."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        verdict = os.read(read_end, 1)
        os._exit(0 if verdict == READY else 1)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return write_end


async def serve(ready_fd: int | None) -> bool:
    """Run the FUSE loop until unmounted or signalled. True if a signal ended it (then we
    must unmount ourselves)."""
    signalled = False
    async with trio.open_nursery() as nursery:
        async def watch_signals() -> None:
            nonlocal signalled
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for signum in sigs:
                    log.info("received signal %d: unmounting", signum)
                    signalled = True
                    pyfuse3.terminate()
                    return

        async def run_fuse() -> None:
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        nursery.start_soon(run_fuse)
        if ready_fd is not None:
            os.write(ready_fd, READY)
            os.close(ready_fd)
    return signalled


def run(ops: pyfuse3.Operations, options: MountOptions, stack: Stack) -> int:
    handler = log_handler(options)
    pyfuse3.init(ops, stack.mountpoint, fuse_options(options, stack))
    ready_fd = None if options.foreground else detach()
    setup_logging(handler, options.debug)
    log.info("serving %s", stack.mountpoint)
    try:
        signalled = trio.run(serve, ready_fd)
    except BaseException:
        log.exception("main loop failed")
        pyfuse3.close(unmount=True)
        return 1
    pyfuse3.close(unmount=signalled)
    log.info("unmounted %s", stack.mountpoint)
    return 0
