"""Child processes that must not outlive their owner.

A server or worker that Loom starts dies with the process that started it, even
when that process is killed with SIGKILL and has no chance to clean up: the
kernel's parent-death signal (Linux ``PR_SET_PDEATHSIG``) sends it SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """From now on this process gets SIGTERM when ``parent_pid`` (its parent) dies.

    Call it early in the child. If the parent is already gone (it died before the
    signal was armed), the child exits at once. A no-op off Linux.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed: nobody will send it
        os.kill(os.getpid(), signal.SIGTERM)
