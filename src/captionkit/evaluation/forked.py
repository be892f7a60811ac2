"""Pure-Python work run in a forked child process while this one goes on: scoring tokenizes its captions there
while it loads numpy here.

:func:`start` forks only where that is safe and pays: on Linux, from a process with a single thread (forking one
with threads can deadlock the child, and Python 3.12 warns about it), with a second CPU core to run on. Anywhere
else, and whenever the child fails, the work runs in this process when its result is asked for, so the result and
any error are the same either way. The child sends its result back pickled through a pipe and ends with
``os._exit``: it runs no clean-up and flushes none of the parent's buffered output.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import weakref
from collections.abc import Callable
from typing import TypeVar

from captionkit.cpus import usable_cpus

T = TypeVar("T")


def start(work: Callable[[], T]) -> Callable[[], T]:
    """Begin ``work()`` in a child process when :func:`can_fork`; returns the function that waits for its result.

    Call the returned function at most once: it also reaps the child, as dropping it uncalled does.
    """
    if not can_fork():
        return work
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(read_end)
        os.close(write_end)
        return work
    if pid == 0:  # the child
        try:
            os.close(read_end)
            try:
                payload = pickle.dumps((True, work()), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:  # the parent runs the work again and meets the error itself
                payload = pickle.dumps((False, None))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        finally:
            os._exit(0)
    os.close(write_end)

    def result() -> T:
        reap.detach()
        try:
            with os.fdopen(read_end, "rb") as pipe:
                payload = pipe.read()
        finally:
            _wait(pid)
        try:
            done, value = pickle.loads(payload)
        except Exception:  # the child died before it wrote everything
            done, value = False, None
        return value if done else work()

    # Never asked (the caller failed first): the child is reaped when the result's function is dropped.
    reap = weakref.finalize(result, _reap, pid, read_end)
    return result


def _reap(pid: int, read_end: int) -> None:
    os.close(read_end)  # the child's write fails, and it exits
    _wait(pid)


def _wait(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # reaped already (a process that ignores SIGCHLD)
        os.waitpid(pid, 0)


def can_fork() -> bool:
    """Whether :func:`start` forks here: Linux, this process's only thread, and another CPU core it may use."""
    if not sys.platform.startswith("linux") or usable_cpus() < 2:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False
