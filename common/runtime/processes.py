"""Child processes that must not outlive their owner, and the guards of the servers Loom starts.

A server or worker that Loom starts dies with the process that started it, even
when that process is killed with SIGKILL and has no chance to clean up: the
kernel's parent-death signal (Linux ``PR_SET_PDEATHSIG``) sends it SIGTERM.
Two servers never share a data folder: the server holds a ``flock`` on it
(:func:`lock_folder`). The Redis and Kafka helpers start theirs this way.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from common.errors import StoreError

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


LOCK_FILE = ".lock"
LOCK_WAIT_S = 5.0
"""How long a new server waits for the folder's lock: a server whose owner was just killed needs a moment to exit."""

# One long-lived thread starts every child: the parent-death signal fires when the starting thread ends.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loom-server-spawner")


def spawn_guarded(
    args: list[str],
    *,
    die_with_owner: bool,
    pass_fds: tuple[int, ...] = (),
    output: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start a server process on its own session; with ``die_with_owner`` it gets SIGTERM when this process dies.

    ``output``: a file for the server's stdout and stderr (default: discarded); ``env`` and ``cwd``: its
    environment and working folder (default: this process's)."""
    setpriv = shutil.which("setpriv") if die_with_owner else None
    command = [setpriv, "--pdeathsig", "TERM", *args] if setpriv else args
    # without setpriv the child arms the signal itself, between fork and exec
    preexec = partial(die_with_parent, os.getpid()) if die_with_owner and not setpriv and os.name == "posix" else None

    def start() -> subprocess.Popen:
        sink = output.open("ab") if output is not None else subprocess.DEVNULL
        try:
            return subprocess.Popen(
                command,
                stdout=sink,
                stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal reaches the owner, which stops the server in order
                pass_fds=pass_fds,
                preexec_fn=preexec,
                env=env,
                cwd=cwd,
            )
        finally:
            if output is not None:
                sink.close()

    return _SPAWNER.submit(start).result()


def terminate(process: subprocess.Popen | None, timeout: float) -> None:
    """Stop a server process: SIGTERM (its orderly shutdown), then SIGKILL after ``timeout`` seconds."""
    terminate_all([process], timeout)


def terminate_all(processes: Sequence[subprocess.Popen | None], timeout: float) -> None:
    """:func:`terminate` for several processes at once: SIGTERM to each, in order, then one ``timeout`` for all
    before SIGKILL, so their shutdowns overlap."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def lock_folder(directory: Path, wait_s: float = LOCK_WAIT_S, *, kind: str, server: str, fix: str) -> int:
    """An open descriptor holding an exclusive ``flock`` on ``directory``; StoreError when a live server holds it.

    The error names the folder's ``kind`` ("Redis"), the ``server`` that holds it ("redis-server") and the ``fix``."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                holder = (directory / "owner").read_text().strip() if (directory / "owner").is_file() else "unknown"
                raise StoreError(
                    f"the {kind} folder {directory} is in use by another {server} ({holder}); two servers must "
                    f"never share one folder. Fix: {fix}"
                ) from None
            time.sleep(0.1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """Whether process ``pid`` is running: not gone, and not a zombie (a child of ours that exited but was not
    reaped yet has stopped all the same)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(") ", 1)[1].startswith("Z")  # the name in parentheses may itself hold ") "
