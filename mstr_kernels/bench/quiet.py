"""Silences what the torch profiler's native code prints to stderr on every use and that tells
a benchmark user nothing: kineto's `USDT ... profiler_start/stop` trace points, its
`gpuGetDeviceCount failed` on machines without a GPU driver, and c10's CPU allocator notice that
blocks allocated before profiling have no deallocation event. These come from C++ (no Python
logging or warnings switch reaches them once torch is loaded), so stderr's file descriptor is
caught while the profiler runs and every other line is written back unchanged."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

PROFILER_NOISE = re.compile(
    r"(^USDT:.*\] profiler_(start|stop)\s*$)"
    r"|(^ERROR:.*\] gpuGetDeviceCount failed with code \d+\s*$)"
    r"|(CPUAllocator\.cpp:\d+\] Memory block of unknown size was allocated before the profiling "
    r"started)")


@contextlib.contextmanager
def profiler_noise_filtered():
    """Within the block, lines of stderr matching PROFILER_NOISE are dropped; the rest is kept
    (written out when the block ends)."""
    stderr_fd = 2  # where native code writes, whatever sys.stderr is
    try:
        saved = os.dup(stderr_fd)
    except OSError:  # no stderr at all
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), stderr_fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, stderr_fd)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(True)
                    if not PROFILER_NOISE.search(line.decode(errors="replace"))]
            if kept:
                os.write(stderr_fd, b"".join(kept))
