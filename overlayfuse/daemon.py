"""Mounting, daemonizing and the main loop.

pyfuse3.init() mounts before any fork, so mount errors still reach the terminal. In the
background case the command then forks twice; the daemon detaches from stdio and reports
"serving" over a pipe, and only then does the command exit 0 (podman waits for exactly this).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys

import pyfuse3
import trio

from .layers import Stack
from .options import MountOptions

log = logging.getLogger("overlayfuse")
READY = b"R"


def fuse_options(options: MountOptions, stack: Stack) -> set[str]:
    fsname = options.source.replace(",", "_").replace("\\", "_")
    chosen = {"default_permissions", f"fsname={fsname}", "subtype=overlayfuse"}
    if os.geteuid() == 0:
        # Kernel overlayfs is usable by every user; FUSE mounts are not without allow_other.
        chosen.add("allow_other")
    chosen.update(options.fuse_options)
    if stack.read_only:
        chosen.add("ro")
    return chosen


def setup_logging(options: MountOptions) -> None:
    level = logging.DEBUG if options.debug else logging.INFO
    handler: logging.Handler
    if options.log_file is not None:
        handler = logging.FileHandler(options.log_file)
    elif options.foreground:
        handler = logging.StreamHandler(sys.stderr)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("overlayfuse[%(process)d]: %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(level)
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
    pyfuse3.init(ops, stack.mountpoint, fuse_options(options, stack))
    ready_fd = None if options.foreground else detach()
    setup_logging(options)
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
