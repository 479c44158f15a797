"""Linux native AIO (io_setup/io_submit/io_getevents) through ctypes, for tests that need a
write that completes asynchronously: the kernel's post-write page-cache invalidation does not
run on that path, which a synchronous pwrite would hide."""

from __future__ import annotations

import ctypes
import mmap
import os
import platform

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
IO_SETUP, IO_DESTROY, IO_GETEVENTS, IO_SUBMIT = _SYSCALLS[platform.machine()]
IOCB_CMD_PWRITE = 1


class Iocb(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("key", ctypes.c_uint32),
                ("rw_flags", ctypes.c_int32), ("opcode", ctypes.c_uint16),
                ("reqprio", ctypes.c_int16), ("fildes", ctypes.c_uint32),
                ("buf", ctypes.c_uint64), ("nbytes", ctypes.c_uint64),
                ("offset", ctypes.c_int64), ("reserved2", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("resfd", ctypes.c_uint32)]


class IoEvent(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class AioContext:
    """One AIO context; `pwrite` submits one write and waits for its completion event."""

    def __init__(self) -> None:
        self._ctx = ctypes.c_ulong(0)
        _check(_libc.syscall(IO_SETUP, 1, ctypes.byref(self._ctx)))

    def close(self) -> None:
        _libc.syscall(IO_DESTROY, self._ctx)

    def __enter__(self) -> AioContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pwrite(self, fd: int, buffer: mmap.mmap, offset: int) -> int:
        """Write all of `buffer` (page-aligned, as O_DIRECT wants: an mmap) at `offset`."""
        iocb = Iocb(opcode=IOCB_CMD_PWRITE, fildes=fd,
                    buf=ctypes.addressof(ctypes.c_char.from_buffer(buffer)),
                    nbytes=len(buffer), offset=offset)
        pointers = (ctypes.POINTER(Iocb) * 1)(ctypes.pointer(iocb))
        if _check(_libc.syscall(IO_SUBMIT, self._ctx, 1, pointers)) != 1:
            raise OSError(0, "io_submit took no request")
        event = IoEvent()
        while _check(_libc.syscall(IO_GETEVENTS, self._ctx, 1, 1, ctypes.byref(event),
                                   None)) != 1:
            pass
        if event.res < 0:
            raise OSError(-event.res, os.strerror(-event.res))
        return event.res
