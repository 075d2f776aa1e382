"""Child processes of the local cloud never outlive it.

A clean stop (Ctrl-C, SIGTERM) stops every part in order; these guard the unclean case — the
``ig3 up`` process killed outright (SIGKILL, OOM) — so that no agent, function container or
Redis server is left orphaned on the machine.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn`` for Popen (Linux): the kernel sends ``sig`` when the spawning thread dies.

    Only for children spawned from a thread that lives as long as the parent (the main thread).
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the clean stop path still applies
        pass


def exit_when_orphaned(poll_s: float = 1.0) -> None:
    """In a worker process: exit as soon as the parent is gone (re-parented to init/subreaper)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            threading.Event().wait(poll_s)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
