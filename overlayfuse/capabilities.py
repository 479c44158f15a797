"""What the installed pyfuse3 can do beyond the 3.5 release.

scripts/setup builds pyfuse3 with patches/pyfuse3/*.patch; a stock pyfuse3 works too, without
these (docs/design.md lists what is missing then).
"""

from __future__ import annotations

import pyfuse3

# The kernel sends FALLOCATE (registered with the handler): fallocate(2) works.
FALLOCATE = hasattr(pyfuse3.Operations, "fallocate")
# opendir may return a FileInfo with cache_readdir/keep_cache: the kernel caches listings.
CACHED_LISTINGS = hasattr(pyfuse3.FileInfo, "cache_readdir")
# enable_no_opendir: the kernel opens dirs itself and caches their listings, without OPENDIR
# and RELEASEDIR requests; readdir gets the dir's inode.
NO_OPENDIR = hasattr(pyfuse3.Operations, "enable_no_opendir")
# EntryAttributes.attr_ino: the st_ino shown may differ from the FUSE node id.
ATTR_INO = hasattr(pyfuse3.EntryAttributes, "attr_ino")
# setxattr gets XATTR_CREATE/XATTR_REPLACE and applies them itself, atomically.
SETXATTR_FLAGS = hasattr(pyfuse3.Operations, "enable_setxattr_flags")
# FUSE_HANDLE_KILLPRIV_V2: the daemon clears set-ID bits where the kernel asks (write() gets
# kill_suidgid, RequestContext.kill_suidgid), and the kernel stops its per-write GETXATTR.
KILLPRIV_V2 = hasattr(pyfuse3.Operations, "enable_killpriv_v2")
# FUSE_DONT_MASK: the umask comes with create/mkdir/mknod, for the daemon to apply.
DONT_MASK = hasattr(pyfuse3.Operations, "enable_dont_mask")
