"""`overlayfuse` command: parse, check, mount, serve. Bad input is one line on stderr and a
non-zero exit, never a traceback."""

from __future__ import annotations

import sys

from .errors import MountError, UsageError
from .layers import open_stack
from .options import parse_args
from .remount import remount

EXIT_USAGE = 2
EXIT_MOUNT = 1


def _fail(message: str, code: int) -> int:
    print(f"overlayfuse: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    try:
        stack = open_stack(options)
    except MountError as e:
        return _fail(str(e), EXIT_MOUNT)

    # Imported late: the checks above must work (and fail cleanly) even where pyfuse3 or
    # trio cannot be loaded.
    try:
        from .daemon import run
        from .idmap import IdMap
        from .ops import Operations
        from .tree import Tree
    except ImportError as e:
        return _fail(f"cannot load the FUSE runtime: {e}", EXIT_MOUNT)

    ops = Operations(Tree(stack), timeout=options.timeout, debug=options.debug,
                     uids=IdMap(options.uidmapping, options.squash_to_uid),
                     gids=IdMap(options.gidmapping, options.squash_to_gid))
    try:
        return run(ops, options, stack)
    except MountError as e:
        return _fail(str(e), EXIT_MOUNT)
    except RuntimeError as e:
        return _fail(f"cannot mount on {stack.mountpoint}: {e}", EXIT_MOUNT)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
