"""queuectl: a background job queue for shell commands, kept in a folder (the spool).

    from queuectl import Spool
    spool = Spool("/tmp/spool")
    job = spool.enqueue("echo hello", priority=1)
    spool.get(job["id"])["state"]   # 'pending'
"""
from .errors import (DuplicateJob, FieldError, InvalidInput, JobNotFound, QueuectlError,
                     UnsafeSpool, WrongState)
from .version import __version__  # noqa: F401 (the package's version)


def __getattr__(name):
    # Spool and State load on first use, so `queuectl status` does not pay for what it skips
    if name == "Spool":
        from .spool import Spool
        return Spool
    if name == "State":
        from .job import State
        return State
    raise AttributeError(name)


__all__ = ["Spool", "State", "QueuectlError", "InvalidInput", "FieldError", "DuplicateJob",
           "JobNotFound", "WrongState", "UnsafeSpool"]
