"""Command-line and `-o` option parsing into one immutable MountOptions.

Two forms are accepted:

    overlayfuse [--workdir W] LOWER[:LOWER...] UPPER MERGED
    overlayfuse [-f] [-d] -o lowerdir=A:B[,upperdir=U,workdir=W][,...] [SOURCE] MERGED

Only syntax is checked here; what the paths point at is checked by `stack.open_stack`.
"""

from __future__ import annotations

import errno
import os
from collections import namedtuple

from . import __version__
from .errors import MountError, UsageError

# Options handed to libfuse unchanged (mount flags and FUSE mount options it accepts).
FUSE_FLAG_OPTIONS = frozenset({
    "allow_other", "allow_root", "auto_unmount", "default_permissions",
    "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
    "async", "sync", "dirsync", "atime", "noatime",
})
FUSE_VALUE_OPTIONS = frozenset({"fsname", "subtype"})

# The VFS flags of a mount: what `mount -o remount,...` may change (util-linux names).
VFS_FLAGS = frozenset({
    "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async",
    "dirsync", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
    "strictatime", "nostrictatime", "lazytime", "nolazytime",
})

# Options that mount(8)/mount.fuse3 or podman may pass and that are not for libfuse (it
# refuses the atime variants other than atime/noatime; the daemon applies those itself).
SILENT_OPTIONS = frozenset({"defaults", "nofail", "_netdev", "user", "users", "nouser",
                            "noauto", "auto", "private", "diratime", "nodiratime", "relatime",
                            "norelatime", "strictatime", "nostrictatime", "lazytime",
                            "nolazytime"})


# redirect_dir= values, as kernel overlayfs has them: "on" creates and follows directory
# redirects, "follow" only follows them, "nofollow" ignores them. "off" is "follow", as on a
# kernel built with redirect_always_follow (the default).
REDIRECT_MODES = {"on": "on", "follow": "follow", "nofollow": "nofollow", "off": "follow"}


class IdMapping(namedtuple("IdMapping", "disk view size")):
    """One `disk:view:size` range of uidmapping=/gidmapping=, in fuse-overlayfs's order: ids
    disk..disk+size-1 stored in the layers show through the mount as view..view+size-1."""

    __slots__ = ()


class MountOptions:
    """What the command line asks for. Built once, by parse_args, and never changed."""

    __slots__ = ("lowerdirs", "upperdir", "workdir", "mountpoint", "source", "workdir_chosen",
                 "foreground", "debug", "log_file", "fuse_options", "read_only", "volatile",
                 "timeout", "uidmapping", "gidmapping", "squash_to_uid", "squash_to_gid",
                 "remount", "vfs_flags", "redirect_dir", "metacopy", "warnings")

    def __init__(self, *, lowerdirs: tuple[str, ...], upperdir: str | None,
                 workdir: str | None, mountpoint: str,
                 source: str = "overlayfuse",        # mount(8)'s SOURCE, shown as the fsname
                 workdir_chosen: bool = False,       # the workdir was picked for the short form
                 foreground: bool = False, debug: bool = False, log_file: str | None = None,
                 fuse_options: frozenset[str] = frozenset(), read_only: bool = False,
                 volatile: bool = False,             # skip fsync, as podman's `volatile`
                 timeout: float = 3600.0,            # kernel entry/attr cache lifetime, seconds
                 uidmapping: tuple[IdMapping, ...] = (), gidmapping: tuple[IdMapping, ...] = (),
                 squash_to_uid: int | None = None, squash_to_gid: int | None = None,
                 remount: bool = False,              # change the live mount in place
                 vfs_flags: tuple[str, ...] = (),    # the VFS_FLAGS given, in order
                 redirect_dir: str = "on",           # one of REDIRECT_MODES
                 metacopy: bool = False,             # copy up metadata only, data on demand
                 warnings: tuple[str, ...] = ()) -> None:
        self.lowerdirs = lowerdirs
        self.upperdir = upperdir
        self.workdir = workdir
        self.mountpoint = mountpoint
        self.source = source
        self.workdir_chosen = workdir_chosen
        self.foreground = foreground
        self.debug = debug
        self.log_file = log_file
        self.fuse_options = fuse_options
        self.read_only = read_only
        self.volatile = volatile
        self.timeout = timeout
        self.uidmapping = uidmapping
        self.gidmapping = gidmapping
        self.squash_to_uid = squash_to_uid
        self.squash_to_gid = squash_to_gid
        self.remount = remount
        self.vfs_flags = vfs_flags
        self.redirect_dir = redirect_dir
        self.metacopy = metacopy
        self.warnings = warnings


def split_escaped(text: str, sep: str) -> list[str]:
    r"""Split on `sep`, honouring backslash escapes (`\:`, `\,`, `\\`)."""
    items: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, "\\"))
        elif ch == sep:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return items


def unescape(text: str) -> str:
    r"""Drop the backslash of each `\X` escape."""
    return split_escaped(text, "\0")[0]


def split_option_string(text: str) -> list[str]:
    """Split an `-o` string on commas, keeping backslash escapes for the path splitter."""
    items: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            if ch != ",":
                current.append("\\")
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if escaped:
        current.append("\\")
    items.append("".join(current))
    return [item for item in items if item]


def parse_layer_list(text: str) -> tuple[str, ...]:
    dirs = tuple(split_escaped(text, ":"))
    if any(not d for d in dirs):
        raise UsageError(f"empty path in layer list '{text}'")
    return dirs


def parse_id_mappings(name: str, text: str) -> tuple[IdMapping, ...]:
    fields = [f for f in text.split(":") if f != ""]
    if not fields or len(fields) % 3:
        raise UsageError(f"{name}: expected disk-id:shown-id:size triples, got '{text}'")
    try:
        numbers = [int(f) for f in fields]
    except ValueError:
        raise UsageError(f"{name}: not a number in '{text}'") from None
    if any(n < 0 for n in numbers):
        raise UsageError(f"{name}: negative id in '{text}'")
    mappings = tuple(IdMapping(*numbers[i:i + 3]) for i in range(0, len(numbers), 3))
    if any(m.size == 0 for m in mappings):
        raise UsageError(f"{name}: zero-sized range in '{text}'")
    return mappings


def parse_id(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name}: not a number: '{text}'") from None
    if value < 0:
        raise UsageError(f"{name}: negative id: '{text}'")
    return value


HELP = f"""\
usage: overlayfuse [-f] [-d] [--log-file FILE] -o lowerdir=A[:B...][,upperdir=U,workdir=W][,...]
                   [SOURCE] MERGED
       overlayfuse [-f] [-d] [--log-file FILE] [--workdir W] LOWER[:LOWER...] [UPPER] MERGED

Userspace overlay filesystem: merge read-only lower directories and one writable upper
directory into one view, like kernel overlayfs. Without UPPER (or upperdir=) the view is
read-only. See docs/usage.md.

options:
  -o OPTS           comma-separated mount options (lowerdir=, upperdir=, workdir=,
                    redirect_dir=on|follow|nofollow|off, metacopy=on|off, volatile, FUSE
                    options such as allow_other, ro); may be given several times
  -f, --foreground  stay in the foreground and log to stderr
  -d, --debug       log every request (implies --foreground unless --log-file is given)
  --workdir W       work directory for the short form (same filesystem as UPPER, outside
                    every layer)
  --log-file FILE   log to this file instead of syslog
  --version         show the version and exit
  -h, --help        show this help and exit
"""


class CommandLine:
    """The command line split into its flags and paths; `-o` strings are read later."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.options: list[str] = []
        self.foreground = False
        self.debug = False
        self.workdir: str | None = None
        self.log_file: str | None = None


LONG_FLAGS = {"--foreground": "foreground", "--debug": "debug"}
SHORT_FLAGS = {"f": "foreground", "d": "debug"}
LONG_WITH_VALUE = {"--workdir": "workdir", "--log-file": "log_file"}


def read_command_line(argv: list[str]) -> CommandLine:
    """Flags and paths in any order, as getopt reads them: short flags may be grouped (-fd)
    and take their value attached (-oOPTS) or as the next word; long ones as --name=VALUE or
    --name VALUE; `--` ends the flags. --help and --version print and exit."""
    line = CommandLine()
    words = iter(argv)

    def value_of(flag: str, attached: str) -> str:
        value = attached or next(words, None)
        if value is None:
            raise UsageError(f"argument {flag}: expected one argument")
        return value

    for word in words:
        if word == "--":
            line.paths.extend(words)
        elif word in ("-h", "--help"):
            print(HELP, end="")
            raise SystemExit(0)
        elif word == "--version":
            print(f"overlayfuse {__version__}")
            raise SystemExit(0)
        elif word.startswith("--"):
            name, has_value, attached = word.partition("=")
            if name in LONG_WITH_VALUE:
                setattr(line, LONG_WITH_VALUE[name], attached if has_value else value_of(name, ""))
            elif name in LONG_FLAGS and not has_value:
                setattr(line, LONG_FLAGS[name], True)
            else:
                raise UsageError(f"unrecognized arguments: {word}")
        elif word.startswith("-") and word != "-":
            for at, letter in enumerate(word[1:], start=2):
                if letter == "o":
                    line.options.append(value_of("-o", word[at:]))
                    break
                if letter not in SHORT_FLAGS:
                    raise UsageError(f"unrecognized arguments: {word}")
                setattr(line, SHORT_FLAGS[letter], True)
        else:
            line.paths.append(word)
    return line


def default_workdir(upperdir: str) -> str:
    """Where the short form keeps its workdir: a hidden sibling of UPPER (same filesystem,
    outside every layer)."""
    upper = os.path.abspath(upperdir)
    parent, name = os.path.split(upper.rstrip("/") or "/")
    return os.path.join(parent, f".{name}.overlayfuse-work")


def parse_args(argv: list[str]) -> MountOptions:
    args = read_command_line(argv)
    settings: dict[str, object] = {}
    fuse_options: set[str] = set()
    warnings: list[str] = []
    vfs_flags: list[str] = []
    for option_string in args.options:
        for item in split_option_string(option_string):
            _apply_option(item, settings, fuse_options, warnings)
            if item in VFS_FLAGS:
                vfs_flags.append(item)

    paths: list[str] = args.paths
    if settings.get("remount"):
        # As kernel overlayfs on a remount: only the VFS flags count; the layers and every
        # other option are ignored, silently.
        if len(paths) not in (1, 2):
            raise UsageError("with -o remount, give [SOURCE] MERGED")
        return MountOptions(lowerdirs=(), upperdir=None, workdir=None, mountpoint=paths[-1],
                            remount=True, vfs_flags=tuple(vfs_flags))
    workdir_chosen = False
    if "lowerdir" not in settings and ("upperdir" in settings or "workdir" in settings):
        raise MountError(errno.EINVAL, "no lowerdir given (add -o lowerdir=DIR[:DIR...])")
    if "lowerdir" in settings:
        if args.workdir is not None:
            settings.setdefault("workdir", args.workdir)
        if len(paths) not in (1, 2):
            raise UsageError("with -o lowerdir=, give [SOURCE] MERGED")
        mountpoint = paths[-1]
        if len(paths) == 2:
            settings["source"] = paths[0]
        if "upperdir" in settings and "workdir" not in settings:
            raise MountError(errno.EINVAL, "upperdir given without workdir",
                             settings["upperdir"])  # type: ignore[arg-type]
    else:
        if len(paths) == 3:
            settings["lowerdir"] = parse_layer_list(paths[0])
            settings["upperdir"] = paths[1]
            if args.workdir is not None:
                settings["workdir"] = args.workdir
            else:
                settings["workdir"] = default_workdir(paths[1])
                workdir_chosen = True
            mountpoint = paths[2]
        elif len(paths) == 2:
            settings["lowerdir"] = parse_layer_list(paths[0])
            mountpoint = paths[1]
        elif not paths:
            raise MountError(errno.EINVAL, "no lowerdir given (use LOWER UPPER MERGED or "
                                           "-o lowerdir=...)")
        else:
            raise UsageError("expected LOWER[:LOWER...] UPPER MERGED")
    if "upperdir" not in settings and "workdir" in settings:
        warnings.append("workdir given without upperdir: ignored, the mount is read-only")
        settings.pop("workdir")

    redirect_dir, metacopy = _features(settings)
    if "ro" in fuse_options:
        settings["read_only"] = True
    fuse_options.discard("rw")
    debug = bool(args.debug)
    return MountOptions(
        lowerdirs=settings["lowerdir"],  # type: ignore[arg-type]
        upperdir=settings.get("upperdir"),  # type: ignore[arg-type]
        workdir=settings.get("workdir"),  # type: ignore[arg-type]
        mountpoint=mountpoint,
        source=settings.get("source", "overlayfuse"),  # type: ignore[arg-type]
        workdir_chosen=workdir_chosen,
        foreground=bool(args.foreground) or (debug and args.log_file is None),
        debug=debug,
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
        fuse_options=frozenset(fuse_options),
        read_only=bool(settings.get("read_only", False)),
        volatile=bool(settings.get("volatile", False)),
        timeout=settings.get("timeout", 3600.0),  # type: ignore[arg-type]
        uidmapping=settings.get("uidmapping", ()),  # type: ignore[arg-type]
        gidmapping=settings.get("gidmapping", ()),  # type: ignore[arg-type]
        squash_to_uid=settings.get("squash_to_uid"),  # type: ignore[arg-type]
        squash_to_gid=settings.get("squash_to_gid"),  # type: ignore[arg-type]
        vfs_flags=tuple(vfs_flags),
        redirect_dir=redirect_dir,
        metacopy=metacopy,
        warnings=tuple(warnings),
    )


def _features(settings: dict[str, object]) -> tuple[str, bool]:
    """redirect_dir and metacopy, with kernel overlayfs's rule: metacopy needs redirects, so
    metacopy=on turns them on unless redirect_dir= says otherwise, which is an error (but
    for `follow` on a mount without an upper layer, which only reads them)."""
    given = settings.get("redirect_dir")
    metacopy = settings.get("metacopy") == "on"
    mode = REDIRECT_MODES[given or "on"]  # type: ignore[index]
    if metacopy and mode != "on" and not (mode == "follow" and "upperdir" not in settings):
        raise MountError(errno.EINVAL, "conflicting options: metacopy=on,redirect_dir=" + mode)
    return mode, metacopy


def _apply_option(item: str, settings: dict[str, object], fuse_options: set[str],
                  warnings: list[str]) -> None:
    key, has_value, value = item.partition("=")
    if key == "lowerdir" and has_value:
        if not value:
            raise MountError(errno.EINVAL, "lowerdir= is empty")
        settings["lowerdir"] = parse_layer_list(value)
    elif key in ("upperdir", "workdir") and has_value:
        if not value:
            raise MountError(errno.EINVAL, f"{key}= is empty")
        settings[key] = unescape(value)
    elif key in ("uidmapping", "gidmapping") and has_value:
        settings[key] = parse_id_mappings(key, value)
    elif key in ("squash_to_uid", "squash_to_gid") and has_value:
        settings[key] = parse_id(key, value)
    elif key == "squash_to_root" and not has_value:
        settings["squash_to_uid"] = 0
        settings["squash_to_gid"] = 0
    elif key == "timeout" and has_value:
        try:
            settings["timeout"] = float(value)
        except ValueError:
            raise UsageError(f"timeout: not a number: '{value}'") from None
        if not settings["timeout"] >= 0:  # also rejects nan
            raise UsageError(f"timeout: must be >= 0: '{value}'")
    elif key == "redirect_dir" and value in REDIRECT_MODES:
        settings[key] = value
    elif key == "metacopy" and value in ("on", "off"):
        settings[key] = value
    elif key in ("redirect_dir", "metacopy"):
        raise MountError(errno.EINVAL, f"bad value for '{key}'")
    elif key in ("volatile", "remount") and not has_value:
        settings[key] = True
    elif key in FUSE_FLAG_OPTIONS and not has_value:
        fuse_options.add(key)
    elif key in FUSE_VALUE_OPTIONS and has_value:
        fuse_options.add(item)
    elif key in SILENT_OPTIONS and not has_value:
        pass
    else:
        warnings.append(f"ignoring unknown option '{item}'")
