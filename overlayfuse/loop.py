"""The FUSE main loop: pyfuse3 serves the mounted connection as trio tasks until the mount
goes away or a stop signal arrives."""

from __future__ import annotations

import logging
import os
import signal

import pyfuse3
import trio

from .cli import STOP_SIGNALS
from .fusedev import SESSION_OPTIONS, FuseMount, fuse_options
from .idmap import IdMap
from .layers import Stack
from .ops import Operations
from .options import MountOptions
from .tree import Tree

log = logging.getLogger("overlayfuse")


def serve(stack: Stack, options: MountOptions, fuse: FuseMount) -> None:
    """Serve until the mount goes away or a stop signal arrives."""
    # fusermount3's auto_unmount tells a dead daemon by an open of the mount dir failing
    # with ENOTCONN: an open that sends no OPENDIR never fails.
    ops = Operations(Tree(stack), timeout=options.timeout, debug=options.debug,
                     uids=IdMap(options.uidmapping, options.squash_to_uid),
                     gids=IdMap(options.gidmapping, options.squash_to_gid),
                     no_opendir="auto_unmount" not in options.fuse_options)
    # libfuse takes a connection that is already mounted as the mountpoint /dev/fd/N. It
    # gets its own fd (it closes it); ours stays for the unmount.
    session_options = fuse_options(options, stack) & SESSION_OPTIONS
    pyfuse3.init(ops, f"/dev/fd/{os.dup(fuse.fd)}", session_options)
    try:
        trio.run(_main_loop, ops)
    finally:
        pyfuse3.close(unmount=False)


async def _main_loop(ops: Operations) -> None:
    async with trio.open_nursery() as nursery:
        async def watch_signals() -> None:
            with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
                # Held back since the mount: one sent while the runtime loaded arrives now.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                async for signum in signals:
                    log.info("received signal %d: unmounting", signum)
                    pyfuse3.terminate()
                    return

        async def run_fuse() -> None:
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch_signals)
        nursery.start_soon(run_fuse)
        if ops.listing_expiry is not None:
            nursery.start_soon(ops.listing_expiry.run)
