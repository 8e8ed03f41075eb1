"""What tests ask of processes a pool started."""

import os


def alive(pid: int) -> bool:
    """Whether a process with ``pid`` still exists (a zombie counts: nobody waited for it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
