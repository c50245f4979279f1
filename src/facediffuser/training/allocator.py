"""The C allocator of a training process on the CPU: freed large blocks stay in the process for the next step.

glibc's ``malloc`` gives a block above its mmap threshold its own mapping, returned to the kernel when freed, and
gives the top of its heap back once more than the trim threshold lies free there. A training step on the CPU
allocates and frees the same large activations every step (the mini SDM: 20 MiB attention maps), so the kernel maps
and zeroes those pages again every step. :func:`keep_freed_blocks` sets both thresholds so that blocks up to
:data:`MMAP_THRESHOLD` come from the heap and the heap keeps what is freed: the next step reuses the same memory. It
changes where tensors live, never what they hold; the process keeps its peak memory until it ends.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit machines (DEFAULT_MMAP_THRESHOLD_MAX): blocks below it come from the heap.
MMAP_THRESHOLD = 32 * 1024 * 1024
# The heap's free top is given back only beyond this (mallopt takes a C int: 2 GiB less one byte).
TRIM_THRESHOLD = 2**31 - 1
# A user's own malloc settings win.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_blocks() -> bool:
    """Sets glibc's mmap and trim thresholds for this process (see the module); ``True`` when both were set.

    Does nothing (``False``) off Linux, with another C library (a preloaded allocator such as jemalloc or tcmalloc
    has no ``mallopt``, or ignores it), or when the environment already sets malloc's thresholds
    (``MALLOC_*_`` or a ``glibc.malloc`` tunable).
    """
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload or "mimalloc" in preload:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if done:
        logger.debug("malloc keeps freed blocks of up to %d MiB on its heap", MMAP_THRESHOLD >> 20)
    return done
