"""Errors of queuectl. Each knows the exit code the CLI gives it (docs/contract.md "Commands")."""


class QueuectlError(Exception):
    """Root of every error queuectl raises on purpose; exit code 1: the operation failed."""

    exit_code = 1


class InvalidInput(QueuectlError, ValueError):
    """Bad usage or input (a duplicate id included); nothing was changed. Exit code 2."""

    exit_code = 2


class FieldError(InvalidInput):
    """A job field or config value is wrong; the message names it."""

    def __init__(self, field, message):
        self.field = field
        super().__init__(f"{field}: {message}")


class DuplicateJob(InvalidInput):
    def __init__(self, job_id, state):
        self.job_id = job_id
        self.state = state
        super().__init__(f"id: job {job_id!r} already exists (state {state})")


class JobNotFound(QueuectlError, LookupError):
    def __init__(self, job_id):
        self.job_id = job_id
        super().__init__(f"no such job: {job_id!r}")


class WrongState(QueuectlError):
    """The job exists but is not in a state the operation accepts."""


class UnsafeSpool(QueuectlError, PermissionError):
    """The spool is writable by others or owned by someone else (docs/contract.md "Safety"). Exit code 2."""

    exit_code = 2


class OlderWorkers(QueuectlError):
    """Workers of an earlier on-disk protocol run on the spool: this version's may not start
    beside them (docs/operations.md "Upgrading"). Exit code 2; nothing was started."""

    exit_code = 2


class SpoolError(QueuectlError, OSError):
    """The filesystem refused an operation (full disk, read-only, ...)."""


class LostRace(QueuectlError):
    """Another process moved the job first. Normal in a claim loop, never shown to users."""


class Busy(LostRace):
    """The job file is locked by a live process."""
