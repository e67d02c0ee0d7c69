"""The command line (click, only in this package). Each command parses, makes one API call,
renders: jobs.py (enqueue, wait, retry, pause, dlq, cancel, purge), workers.py, reading.py
(status, list, show, logs, fsck, doctor, metrics, dashboard), settings.py (config, schedule);
common.py holds the group and what they share.

Errors become exit codes in one place (main): QueuectlError knows its code, click's usage
errors are 2, an OSError is one line and 1; never a traceback.
"""
import sys

import click

from ..errors import QueuectlError
from . import jobs, reading, settings, workers  # noqa: F401 (each registers its commands on `cli`)
from .common import cli, complete_job_id, complete_schedule_name  # noqa: F401 (the package's surface)


def main(argv=None):
    try:
        code = cli.main(args=argv, prog_name="queuectl", standalone_mode=False)
        return code if isinstance(code, int) else 0  # ctx.exit(n) comes back as a return value
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except QueuectlError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        click.echo(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), err=True)
        return 1
    return 0


def entry():
    sys.exit(main())
