"""The daemon, once the command has mounted the FUSE connection: logging, loading the FUSE
runtime, serving until the mount goes away, and unmounting itself when a stop signal or a
failure ends it. The command has returned by now (unless -f), so failures go to the log."""

from __future__ import annotations

import gc
import logging
import logging.handlers
import os
import sys

from .fusedev import FuseMount, unmount
from .layers import Stack
from .options import MountOptions

log = logging.getLogger("overlayfuse")


def log_handler(options: MountOptions, log_fd: int | None) -> logging.Handler:
    handler: logging.Handler
    if log_fd is not None:
        handler = logging.StreamHandler(open(log_fd, "a", errors="backslashreplace"))
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


def run(stack: Stack, options: MountOptions, fuse: FuseMount, log_fd: int | None) -> int:
    """Serve until the mount goes away or a stop signal arrives; the exit status."""
    setup_logging(log_handler(options, log_fd), options.debug)
    try:
        code = _serve(stack, options, fuse)
    finally:
        unmount(fuse)   # nothing to do if the mount went away: that is what ended the loop
    if code == 0:
        log.info("unmounted %s", stack.mountpoint)
    logging.shutdown()
    return code


def _serve(stack: Stack, options: MountOptions, fuse: FuseMount) -> int:
    # Requests wait while the runtime loads. The cyclic collector would run some 60 times
    # meanwhile (9% of the load's CPU) and find little to free (about 550 KB, mostly classes
    # that attrs and slotted dataclasses build twice): what the runtime is made of stays for
    # the daemon's life. So it waits, and then leaves all of it out of every later collection
    # (frozen) instead of walking it again in each full one; those 550 KB stay too.
    gc.disable()
    try:
        from .loop import serve
    except ImportError as e:
        log.error("cannot load the FUSE runtime: %s", e)
        return 1
    finally:
        gc.freeze()
        gc.enable()
    log.info("serving %s", stack.mountpoint)
    try:
        serve(stack, options, fuse)
    except BaseException:
        log.exception("main loop failed")
        return 1
    return 0
