"""What every command of the CLI shares: the `cli` group, the spool from the command line,
--json, job-id completion, waiting, progress bars, colours.

click lives only in this package (queuectl/cli/); each command parses, makes one API call,
renders. Errors become exit codes in one place (queuectl/cli/__init__.py, main).
"""
import os
import sys

import click

from .. import render
from ..version import __version__
from ..errors import QueuectlError
from ..paths import default_spool

STATE_CHOICE = click.Choice(["blocked", "pending", "processing", "failed", "completed", "dead"])


def get_spool(ctx):
    from ..spool import Spool
    return Spool(ctx.obj["spool"])


def complete_queue_name(ctx, param, incomplete):
    """shell_complete of queue names: those with settings (file names in queues/, nothing read)."""
    return _complete_json_names(ctx, "queues", incomplete)


def _complete_json_names(ctx, folder, incomplete):
    """The NAME of each NAME.json in a folder of the spool the command line names."""
    from click.shell_completion import CompletionItem
    from .. import fsutil
    layout = completion_layout(ctx)
    if layout is None:
        return []
    return [CompletionItem(n[:-5]) for n in sorted(fsutil.listdir(getattr(layout, folder)))
            if n.endswith(".json") and not n.startswith(".") and n.startswith(incomplete)]


def queue_option(ctx, param, value):
    """A queue name option (or several): checked, exit 2 naming the option."""
    from ..job import check_queue
    if value is None:
        return None
    values = value if isinstance(value, tuple) else (value,)
    for one in values:
        try:
            check_queue(one, param.opts[0])
        except QueuectlError as exc:
            raise click.BadParameter(str(exc).split(": ", 1)[-1], param=param) from None
    return value


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(func)


def echo_json(value):
    click.echo(render.to_json(value))


# job-id completion: which states each command's ids come from
_COMPLETE_STATES = {"cancel": ("blocked", "pending", "failed", "processing"), "dlq retry": ("dead",),
                    "retry": ("completed", "failed", "dead"),
                    "wait": ("blocked", "pending", "processing", "failed")}


def completion_layout(ctx):
    """The spool's layout as the command line being completed names it (None if unusable)."""
    from ..paths import Layout
    try:
        return Layout(ctx.find_root().params.get("spool") or default_spool())
    except QueuectlError:
        return None


def complete_job_id(ctx, param, incomplete):
    """shell_complete of the job-id arguments: ids that start with what was typed, from the
    file names of the relevant state folders only (no record read, the spool not created)."""
    from click.shell_completion import CompletionItem
    from .. import fsutil, names
    key = ctx.command.name if ctx.parent is None or ctx.parent.parent is None else f"{ctx.parent.info_name} {ctx.command.name}"
    states = _COMPLETE_STATES.get(key, ("blocked", "pending", "processing", "failed", "completed", "dead"))
    layout = completion_layout(ctx)
    if layout is None:
        return []
    found = set()
    for state in states:
        for name in fsutil.listdir(layout.state_dir(state)):
            if incomplete in name and name.endswith(".json"):
                job_id = names.id_of(state, name)
                if job_id and job_id.startswith(incomplete):
                    found.add(job_id)
    return [CompletionItem(job_id) for job_id in sorted(found)]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spool", type=click.Path(file_okay=False), envvar="QUEUECTL_SPOOL",
              default=None, help="The spool folder (default: $QUEUECTL_SPOOL or ~/.queuectl/spool).")
@click.version_option(version=__version__, prog_name="queuectl")
@click.pass_context
def cli(ctx, spool):
    """queuectl: a background job queue for shell commands, kept in a folder (the spool).

    \b
    Example:
      queuectl enqueue -c 'echo hello'
      queuectl worker start --burst
      queuectl list --state completed
    """
    ctx.ensure_object(dict)
    ctx.obj["spool"] = spool or default_spool()


def wait_for(spool, job_ids, timeout):
    """Wait for jobs to be final; say on stderr which did not complete. Returns the exit code."""
    result = spool.wait(job_ids, timeout=timeout)
    for record in result.dead:
        click.echo(f"job {record['id']} dead: {record.get('last_error') or 'no error recorded'}", err=True)
    if result.unfinished:
        click.echo(f"timed out; not finished: {' '.join(result.unfinished)}", err=True)
    return 0 if result.ok else 1


def note_buried(spool, job_ids):
    """Say which dead jobs were buried for the jobs just retried: they are not revived."""
    buried = spool.buried_for(job_ids)
    if buried:
        click.echo(f"note: {len(buried)} job(s) buried because of them stay dead; to run them too: "
                   f"queuectl retry {' '.join(buried[:20])}{' ...' if len(buried) > 20 else ''}", err=True)


class Progress:
    """A progress bar on stderr for long work, only when stderr is a terminal; else no-op.
    Used as `with Progress(label) as p: api_call(progress=p)`."""

    def __init__(self, label):
        self.label, self.bar, self.shown = label, None, 0

    def __enter__(self):
        return self if sys.stderr.isatty() else None

    def __call__(self, done, total):
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.shown)
        self.shown = done

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def check_job_id(job_id):
    from ..job import check_id
    check_id(job_id, "ID")


def duration_option(ctx, param, value):
    """A duration option (30s, 10m, 2h, 1d, or seconds) -> seconds > 0, or None."""
    from ..timeutil import parse_duration
    if value is None:
        return None
    try:
        seconds = parse_duration(value, param.opts[0])
    except QueuectlError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param=param) from None
    if seconds <= 0:
        raise click.BadParameter(f"must be more than 0, got {value!r}", param=param)
    return seconds


def complete_schedule_name(ctx, param, incomplete):
    """shell_complete of schedule names: the file names in schedules/ (nothing read or created)."""
    return _complete_json_names(ctx, "schedules", incomplete)


def colour_wanted():
    return render.use_colour(sys.stdout, os.environ)


class ColourOut:
    """stdout of `worker run` on a terminal: each event line coloured by render.colour_line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        self.stream.write("".join(render.colour_line(line) + nl for line, nl in _split_lines(text)))

    def flush(self):
        self.stream.flush()


def _split_lines(text):
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\n")
        yield body, line[len(body):]
