"""overlayfuse: a userspace overlay filesystem on pyfuse3 and trio."""

__version__ = "0.1.0"
