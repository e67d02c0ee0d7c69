"""The command line: click lives only here. Each command parses, makes one API call, renders.

Errors become exit codes in one place (main): QueuectlError knows its code, click's usage
errors are 2, an OSError is one line and 1; never a traceback.
"""
import os
import shlex
import sys

import click

from . import render
from .version import __version__
from .errors import InvalidInput, QueuectlError
from .paths import default_spool

STATE_CHOICE = click.Choice(["blocked", "pending", "processing", "failed", "completed", "dead"])


def get_spool(ctx):
    from .spool import Spool
    return Spool(ctx.obj["spool"])


def json_option(func):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(func)


def echo_json(value):
    click.echo(render.to_json(value))


# job-id completion: which states each command's ids come from
_COMPLETE_STATES = {"cancel": ("blocked", "pending", "failed", "processing"), "dlq retry": ("dead",),
                    "retry": ("completed", "failed", "dead"),
                    "wait": ("blocked", "pending", "processing", "failed")}


def _completion_layout(ctx):
    """The spool's layout as the command line being completed names it (None if unusable)."""
    from .paths import Layout
    try:
        return Layout(ctx.find_root().params.get("spool") or default_spool())
    except QueuectlError:
        return None


def complete_job_id(ctx, param, incomplete):
    """shell_complete of the job-id arguments: ids that start with what was typed, from the
    file names of the relevant state folders only (no record read, the spool not created)."""
    from click.shell_completion import CompletionItem
    from . import fsutil, names
    key = ctx.command.name if ctx.parent is None or ctx.parent.parent is None else f"{ctx.parent.info_name} {ctx.command.name}"
    states = _COMPLETE_STATES.get(key, ("blocked", "pending", "processing", "failed", "completed", "dead"))
    layout = _completion_layout(ctx)
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


# ---------------------------------------------------------------- enqueue

class _CommandWords(click.Command):
    """enqueue's parsing (docs/usage.md "enqueue"): queuectl's options may come before or after
    the command's words; an option queuectl does not know belongs to the command once its
    first word is given; `--` ends queuectl's options. Only --help shows help: `-h` is the
    command's (`du -h`)."""

    def parse_args(self, ctx, args):
        # the words after `--`: click drops the `--` itself, and they are the command's whatever they look like
        ctx.meta["words_after_dashes"] = len(args) - args.index("--") - 1 if "--" in args else 0
        return super().parse_args(ctx, args)


def _env_option(ctx, param, values):
    """--env KEY=VALUE (repeatable) -> a dict; a bad one is a usage error."""
    from .job import check_env_name
    env = {}
    for text in values:
        name, eq, value = text.partition("=")
        if not eq:
            raise click.BadParameter(f"{text!r} is not KEY=VALUE", param=param)
        try:
            check_env_name(name)
        except QueuectlError:
            raise click.BadParameter(f"invalid variable name {name!r} (not empty, no '=' or NUL)", param=param) from None
        if "\x00" in value:
            raise click.BadParameter(f"the value of {name} contains a NUL byte", param=param)
        env[name] = value
    return env


@cli.command(cls=_CommandWords, context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]})
@click.argument("words", nargs=-1, type=click.UNPROCESSED)
@click.option("-f", "--file", "file_", type=click.Path(dir_okay=False, allow_dash=True),
              help="Read jobs from a file (- = stdin): an object, an array, or JSON Lines.")
@click.option("-c", "--command", help="The shell command (run with /bin/sh -c), instead of the words.")
@click.option("--id", "job_id", help="The job id (default: generated, sortable by time).")
@click.option("--priority", type=int, help="0-999, lower runs first (default 10).")
@click.option("--run-at", help="Earliest start: ISO-8601, Unix seconds, or +30s/+5m/+2h/+1d.")
@click.option("--max-retries", type=int,
              help="Retries after the first attempt: 3 means up to 4 runs (default: config max-retries).")
@click.option("--timeout", type=float, help="Kill the attempt after this many seconds (0 = none).")
@click.option("--after", "after", multiple=True, shell_complete=complete_job_id,
              help="Run only once job ID has completed (repeatable; the job waits in blocked/).")
@click.option("--env", "env", multiple=True, callback=_env_option, metavar="KEY=VALUE",
              help="Set a variable for the command (repeatable).")
@click.option("--no-capture-env", is_flag=True,
              help="Run with the worker's environment (plus --env), not this shell's.")
@click.option("--on-finish", help="A shell command run when the job is completed or dead (overrides config on-finish).")
@click.option("--wait", "wait_", is_flag=True, help="Then block until the jobs are final, as `wait` does (its exit codes).")
@json_option
@click.pass_context
def enqueue(ctx, words, file_, command, job_id, priority, run_at, max_retries, timeout, after, env,
            no_capture_env, on_finish, wait_, as_json):
    """Add a job: a shell command, or JSON; prints each new id. Exits 0 once they are on disk
    for good. The job runs with this shell's environment (as tsp, nq and pueue do).

    Several words are one command, quoted for the shell. queuectl's options may come before
    or after them; an option queuectl does not know belongs to the command, and every word
    after -- does. An argument that starts with { or [ is a JSON job. max_retries counts
    retries after the first attempt.

    \b
    Examples:
      queuectl enqueue "echo 'Hello World'"
      queuectl enqueue make -C src test --max-retries 3
      queuectl enqueue -- grep -r "a b" . --count      # --count is grep's
      queuectl enqueue '{"id":"job1","command":"sleep 2"}'
      queuectl enqueue --file jobs.jsonl
      queuectl enqueue --wait make test     # like tsp -w / nq -w: exit 0 if it completed
      queuectl enqueue --after build1 --after test1 make deploy   # once both completed
    """
    from .job import capture_env, run_at_option
    items, bare = _enqueue_items(ctx, words, file_)
    if bare is not None:
        if command is not None:
            raise click.UsageError("give the command once: as words or with -c "
                                   "(to pass -c to the command, put it after --)")
        command = bare
    if not items:
        raise InvalidInput("no job given (an empty array)")
    overrides = {"command": command, "id": job_id, "priority": priority, "run_at": run_at_option(run_at),
                 "max_retries": max_retries, "timeout_seconds": timeout, "after": list(after) or None,
                 "on_finish": on_finish}
    with _progress("enqueue") as progress:
        # the CLI records the caller's directory and environment (docs/contract.md "The job record")
        records = get_spool(ctx).enqueue_many(items, overrides=overrides, defaults={"cwd": os.getcwd()},
                                              progress=progress, extra_env=env,
                                              captured_env=None if no_capture_env else capture_env(os.environ))
    if as_json:
        echo_json(records)
    else:
        for rec in records:
            click.echo(rec["id"])
    if wait_:
        sys.stdout.flush()
        ctx.exit(_wait_for(get_spool(ctx), [rec["id"] for rec in records], None))


def _enqueue_items(ctx, words, file_):
    """(the JSON items, the bare command or None) of enqueue's arguments."""
    from .job import parse_batch
    words = list(words)
    after_dashes = ctx.meta.get("words_after_dashes", 0)
    before = words[:len(words) - after_dashes]
    if before and before[0].startswith("-") and before[0] != "-":
        raise click.UsageError(f"no such option: {before[0]} (to pass options to the command, put them "
                               f"after --: queuectl enqueue [OPTIONS] -- COMMAND {before[0]} ...)")
    is_json = bool(before) and before[0].lstrip().startswith(("{", "["))
    if (words or is_json) and file_ is not None:
        raise click.UsageError("give a command, a JSON argument or --file, not two of them")
    if is_json:
        if len(words) > 1:
            unknown = next((w for w in words[1:] if w.startswith("-") and w != "-"), None)
            if unknown is not None:
                raise click.UsageError(f"no such option: {unknown}")
            raise click.UsageError("a JSON job is one argument; for a command that starts with { or [, "
                                   "use -c or put it after --")
        try:
            items = parse_batch(words[0], "JSON argument")
        except InvalidInput as exc:
            raise InvalidInput(f"{exc} (a shell command that starts with {{ or [: use -c, or put it after --)") from None
        if len(items) != 1 or not isinstance(items[0], dict):
            raise InvalidInput("JSON argument: must be one JSON object (use --file for several)")
        return items, None
    if file_ is not None:
        try:
            with click.open_file(file_, "r", encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"--file {file_}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
        return parse_batch(text, f"--file {file_}"), None
    if not words:
        return [{}], None
    return [{}], words[0] if len(words) == 1 else shlex.join(words)


def _wait_for(spool, job_ids, timeout):
    """Wait for jobs to be final; say on stderr which did not complete. Returns the exit code."""
    result = spool.wait(job_ids, timeout=timeout)
    for record in result.dead:
        click.echo(f"job {record['id']} dead: {record.get('last_error') or 'no error recorded'}", err=True)
    if result.unfinished:
        click.echo(f"timed out; not finished: {' '.join(result.unfinished)}", err=True)
    return 0 if result.ok else 1


@cli.command("wait")
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_job_id)
@click.option("--timeout", type=click.FloatRange(0), help="Give up after this many seconds (exit 1).")
@click.pass_context
def wait_cmd(ctx, job_ids, timeout):
    """Block until every named job is final (completed or dead), on any host.

    Exit 0 when all completed; 1 when any ended dead (named on stderr with its last error),
    when --timeout ran out (naming the unfinished ones), or for an unknown id (before waiting).

    \b
    Examples:
      queuectl wait job1 job2
      queuectl wait "$(queuectl enqueue -c 'make')" --timeout 600
    """
    for job_id in job_ids:
        _check_id(job_id)
    ctx.exit(_wait_for(get_spool(ctx), job_ids, timeout))


@cli.command()
@click.argument("job_ids", nargs=-1, required=True, shell_complete=complete_job_id)
@json_option
@click.pass_context
def retry(ctx, job_ids, as_json):
    """Run finished jobs again: each completed, failed or dead job goes back to pending/ with
    attempts 0, due now (its log keeps the earlier attempts); a job with `after` waits in
    blocked/ again until those jobs have completed. All or nothing. Jobs buried because a
    retried job was dead stay dead: retry them too.

    \b
    Example:
      queuectl retry build-42
    """
    for job_id in job_ids:
        _check_id(job_id)
    spool = get_spool(ctx)
    records = spool.retry(job_ids)
    if as_json:
        echo_json(records)
    else:
        for rec in records:
            click.echo(rec["id"])
    _note_buried(spool, [rec["id"] for rec in records])


def _note_buried(spool, job_ids):
    """Say which dead jobs were buried for the jobs just retried: they are not revived."""
    buried = spool.buried_for(job_ids)
    if buried:
        click.echo(f"note: {len(buried)} job(s) buried because of them stay dead; to run them too: "
                   f"queuectl retry {' '.join(buried[:20])}{' ...' if len(buried) > 20 else ''}", err=True)


@cli.command()
@click.pass_context
def pause(ctx):
    """Stop claiming: no worker on any host starts a new job until `resume`. Running jobs
    finish; dropped files are still filed. Persists across worker restarts.

    \b
    Example:
      queuectl pause && queuectl status
    """
    info = get_spool(ctx).pause()
    click.echo(f"paused since {info.get('paused_at') or '?'}; `queuectl resume` to go on")


@cli.command()
@click.pass_context
def resume(ctx):
    """Claim again after `pause` (workers notice within half a second).

    \b
    Example:
      queuectl resume
    """
    was = get_spool(ctx).resume()
    click.echo("resumed" if was else "not paused; nothing to do")


class _progress:
    """A progress bar on stderr for long work, only when stderr is a terminal; else no-op.
    Used as `with _progress(label) as p: api_call(progress=p)`."""

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


# ---------------------------------------------------------------- workers

def _duration_option(ctx, param, value):
    """A duration option (30s, 10m, 2h, 1d, or seconds) -> seconds > 0, or None."""
    from .timeutil import parse_duration
    if value is None:
        return None
    try:
        seconds = parse_duration(value, param.opts[0])
    except QueuectlError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1], param=param) from None
    if seconds <= 0:
        raise click.BadParameter(f"must be more than 0, got {value!r}", param=param)
    return seconds


@cli.group()
def worker():
    """Start and stop workers."""


@worker.command("start")
@click.option("--count", "-n", type=click.IntRange(1, 256), help="Worker processes (default: config worker-count).")
@click.option("--detach", is_flag=True, help="Run in the background and return.")
@click.option("--burst", is_flag=True, help="Exit once no job is due and none is running.")
@click.option("--for", "run_for", callback=_duration_option, metavar="DURATION",
              help="Stop gracefully after this long: 30s, 10m, 2h, 1d (plain number: seconds).")
@click.pass_context
def worker_start(ctx, count, detach, burst, run_for):
    """Start N workers under a supervisor; a line per job event.

    Ctrl+C: running jobs finish, then exit; a second Ctrl+C kills them (back to pending/).
    --detach runs them in the background; `queuectl worker stop` stops them from anywhere.

    \b
    Examples:
      queuectl worker start -n 4
      queuectl worker start --detach --for 8h
      queuectl worker start --burst        # run what is due, then exit
    """
    from . import supervisor
    from .worker import check_filesystem
    spool = get_spool(ctx)
    spool.layout.check_safe()
    check_filesystem(spool.layout)  # once here, rather than once per worker that would be refused
    count = count or spool.config()["worker-count"]
    if detach:
        pid, live, log_path = supervisor.start_detached(spool, count, burst=burst, run_for=run_for)
        until = f" for {run_for:g}s" if run_for else ""
        click.echo(f"started {len(live)} worker(s){until} under supervisor pid {pid}; log: {log_path}")
        return
    from . import ingest
    ingest.ingest_all(spool)  # every `worker start` takes what waits in incoming/
    if not burst:
        click.echo("workers in the foreground: Ctrl+C stops them after their jobs (twice: at once); "
                   "--detach runs them in the background", err=True)
    code = supervisor.Supervisor(spool, count, burst=burst, emit=_emit_line, run_for=run_for).run()
    ctx.exit(code)


@worker.command("run")
@click.option("--burst", is_flag=True, help="Exit once no job is due now.")
@click.pass_context
def worker_run(ctx, burst):
    """Run one worker in this process (what `worker start` runs N of; fits systemd)."""
    from .worker import run_worker
    ctx.exit(run_worker(get_spool(ctx), burst=burst, out=_ColourOut(sys.stdout) if _colour_wanted() else None))


def _emit_line(line):
    click.echo(render.colour_line(line) if _colour_wanted() else line)


@worker.command("stop")
@click.option("--timeout", type=click.FloatRange(0), help="Give up waiting after S seconds (exit 1).")
@click.option("--now", is_flag=True, help="Kill running jobs; they go back to pending/ uncounted.")
@click.option("--no-wait", is_flag=True, help="Ask them to stop and return at once.")
@click.pass_context
def worker_stop(ctx, timeout, now, no_wait):
    """Stop every worker of this spool, on any host; running jobs finish first."""
    from . import supervisor
    remaining, asked = supervisor.stop_workers(get_spool(ctx), now=now, wait=not no_wait, timeout=timeout)
    if not asked:
        click.echo("no worker running")
    elif no_wait:
        click.echo(f"asked {len(asked)} worker(s) to stop")
    elif remaining:
        click.echo(f"still finishing after {timeout:g}s: {', '.join(remaining)}", err=True)
        ctx.exit(1)
    else:
        click.echo(f"stopped {len(asked)} worker(s)")


# ---------------------------------------------------------------- reading

@cli.command()
@json_option
@click.pass_context
def status(ctx, as_json):
    """Jobs per state, live workers and what they run, the oldest waiting job."""
    info = get_spool(ctx).status()
    echo_json(info) if as_json else click.echo(render.status(info))


@cli.command("list")
@click.option("--state", type=STATE_CHOICE, help="Only this state.")
@click.option("--limit", type=click.IntRange(0), help="At most N jobs.")
@json_option
@click.pass_context
def list_(ctx, state, limit, as_json):
    """A table of jobs (pending in claim order)."""
    records = get_spool(ctx).list(state, limit=limit)
    echo_json(records) if as_json else click.echo(render.job_table(records))


@cli.command()
@click.argument("job_id", shell_complete=complete_job_id)
@json_option
@click.pass_context
def show(ctx, job_id, as_json):
    """One job's whole record and its log's path."""
    spool = get_spool(ctx)
    _check_id(job_id)
    rec = spool.get(job_id)
    path = spool.log_path(job_id)
    echo_json(dict(rec, log_path=path)) if as_json else click.echo(render.record(rec, path))


@cli.command()
@click.argument("job_id", shell_complete=complete_job_id)
@click.option("--follow", "-f", is_flag=True, help="Stream it until the job is completed or dead.")
@click.pass_context
def logs(ctx, job_id, follow):
    """The job's log: the output of every attempt."""
    from . import logs as logmod
    spool = get_spool(ctx)
    _check_id(job_id)
    spool.get(job_id)
    out = click.get_binary_stream("stdout")
    path = spool.log_path(job_id)
    if not follow:
        out.write(logmod.read(path))
        return

    def is_final():
        found = spool.find(job_id, patient=True)
        return found is None or found[0] in ("completed", "dead")

    def write(chunk):
        out.write(chunk)
        out.flush()
    logmod.follow(path, is_final, write)


def _check_id(job_id):
    from .job import check_id
    check_id(job_id, "ID")


# ---------------------------------------------------------------- changing

@cli.group()
def dlq():
    """The dead-letter queue: jobs out of retries, or cancelled."""


@dlq.command("list")
@json_option
@click.pass_context
def dlq_list(ctx, as_json):
    """The dead jobs."""
    records = get_spool(ctx).list("dead")
    echo_json(records) if as_json else click.echo(render.job_table(records))


@dlq.command("retry")
@click.argument("job_ids", nargs=-1, shell_complete=complete_job_id)
@click.option("--all", "all_", is_flag=True, help="Every dead job.")
@click.pass_context
def dlq_retry(ctx, job_ids, all_):
    """Move dead jobs back to pending/ with attempts 0, due now."""
    if all_ == bool(job_ids):
        raise click.UsageError("give job ids or --all (one of them)")
    spool = get_spool(ctx)
    retried = spool.dlq_retry(None if all_ else job_ids)
    for job_id in retried:
        click.echo(job_id)
    _note_buried(spool, retried)


@cli.command()
@click.argument("job_id", shell_complete=complete_job_id)
@click.option("--kill", is_flag=True, help="Also a running job: kill its process group.")
@click.option("--timeout", type=click.FloatRange(0), default=30, show_default=True,
              help="With --kill: how long to wait for the job to reach dead/.")
@click.pass_context
def cancel(ctx, job_id, kill, timeout):
    """Send a pending or failed job to dead/ (last_error "cancelled")."""
    done = get_spool(ctx).cancel(job_id, kill=kill, timeout=timeout)
    click.echo(f"{job_id} killed and cancelled" if done.killed else f"{job_id} cancelled")


@cli.command()
@click.option("--state", type=click.Choice(["completed", "dead"]), help="Which jobs to delete.")
@click.option("--completed", is_flag=True, help="Same as --state completed.")
@click.option("--dead", is_flag=True, help="Same as --state dead.")
@click.option("--older-than", help="Only jobs finished longer ago than this (30m, 12h, 7d).")
@click.pass_context
def purge(ctx, state, completed, dead, older_than):
    """Delete completed or dead jobs and their logs.

    \b
    Examples:
      queuectl purge --completed --older-than 7d
      queuectl purge --state dead
    """
    chosen = {s for s, given in (("completed", completed), ("dead", dead), (state, state)) if given}
    if len(chosen) != 1:
        raise click.UsageError("say which jobs, once: --completed, --dead or --state completed|dead")
    state = chosen.pop()
    with _progress("purge") as progress:
        count = get_spool(ctx).purge(state, older_than=older_than, progress=progress)
    click.echo(f"purged {count} {state} job(s)")


@cli.command()
@click.option("--repair", is_flag=True, help="Fix what is safe to fix; never deletes a job.")
@json_option
@click.pass_context
def fsck(ctx, repair, as_json):
    """Check the spool: leftovers of crashes, records that disagree with their folder or
    name, one id in two folders, orphaned logs, jobs of dead workers, unsafe permissions.

    Exit 0 when nothing is (left) wrong, 1 otherwise. With --repair, doubtful files are
    moved to rejected/ beside NAME.error, never deleted.
    """
    from . import fsck as fsckmod
    spool = get_spool(ctx)
    problems = fsckmod.check(spool)
    if repair:
        fsckmod.repair(problems)
    remaining = [p for p in problems if not (p.done and not p.done.startswith("not repaired"))]
    if as_json:
        echo_json({"spool": spool.path, "problems": [p.as_dict() for p in problems],
                   "ok": not remaining})
    else:
        click.echo(render.fsck(problems, spool.path, repair))
    ctx.exit(0 if not remaining else 1)


@cli.command()
@json_option
@click.pass_context
def doctor(ctx, as_json):
    """Check that the spool's filesystem gives what queuectl needs: exclusive create, atomic
    rename between folders, locks that exclude other processes (on other hosts too), and a
    clock that agrees with this host's. One line each: what holds, what does not, the fix.
    Workers run the same checks when they start. Exit 0 when all hold, 1 otherwise.

    \b
    Example:
      queuectl --spool /mnt/gluster/spool doctor
    """
    from . import doctor as doctormod
    spool = get_spool(ctx)
    checks = doctormod.run(spool.layout)
    fs = doctormod.describe(spool.layout)
    ok = all(c.ok for c in checks)
    if as_json:
        echo_json({"spool": spool.path, "filesystem": fs, "checks": [c.as_dict() for c in checks], "ok": ok})
    else:
        click.echo(f"spool {spool.path}: {fs['summary']}")
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}" + ("" if c.ok else f"; fix: {c.fix}"))
        if fs["shared"]:
            click.echo("note: inotify sees no other host's change; idle workers look every rescan-interval "
                       "(config, default 2 s)")
    ctx.exit(0 if ok else 1)


# ---------------------------------------------------------------- config

def complete_schedule_name(ctx, param, incomplete):
    """shell_complete of schedule names: the file names in schedules/ (nothing read or created)."""
    from click.shell_completion import CompletionItem
    from . import fsutil
    layout = _completion_layout(ctx)
    if layout is None:
        return []
    return [CompletionItem(n[:-5]) for n in sorted(fsutil.listdir(layout.schedules))
            if n.endswith(".json") and not n.startswith(".") and n.startswith(incomplete)]


@cli.group()
def schedule():
    """Recurring jobs: one job per time of a cron expression (UTC), fired by the workers.

    \b
    Examples:
      queuectl schedule add nightly '30 2 * * *' -c 'make backup'
      queuectl schedule list
      queuectl schedule remove nightly
    """


@schedule.command("add")
@click.argument("name")
@click.argument("cron")
@click.argument("job_json", required=False)
@click.option("-c", "--command", help="The shell command (run with /bin/sh -c).")
@click.option("--priority", type=int, help="0-999, lower runs first (default 10).")
@click.option("--max-retries", type=int, help="Retries after the first attempt.")
@click.option("--timeout", type=float, help="Kill the attempt after this many seconds (0 = none).")
@json_option
@click.pass_context
def schedule_add(ctx, name, cron, job_json, command, priority, max_retries, timeout, as_json):
    """Add schedule NAME: at each time of the 5-field CRON expression (minute hour
    day-of-month month day-of-week, UTC), a worker enqueues one job with id
    NAME-YYYYMMDDTHHMMZ, exactly once however many workers and hosts run.

    \b
    Examples:
      queuectl schedule add nightly-backup '30 2 * * *' -c 'make backup'
      queuectl schedule add ping '*/5 * * * *' '{"command": "curl -fsS https://example.org", "max_retries": 0}'
    """
    from .job import parse_batch
    fields = {}
    if job_json is not None:
        items = parse_batch(job_json, "JSON argument")
        if len(items) != 1 or not isinstance(items[0], dict):
            raise InvalidInput("JSON argument: must be one JSON object")
        fields = items[0]
    overrides = {"command": command, "priority": priority, "max_retries": max_retries, "timeout_seconds": timeout}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    entry = get_spool(ctx).schedule_add(name, cron, defaults={"cwd": os.getcwd()}, **fields)
    if as_json:
        echo_json(entry)
    else:
        click.echo(f"{entry['name']}: next at {entry['next']}")


@schedule.command("list")
@json_option
@click.pass_context
def schedule_list(ctx, as_json):
    """The schedules, each with its next occurrence, last fired job, fired and skipped counts.

    \b
    Example:
      queuectl schedule list --json
    """
    entries = get_spool(ctx).schedule_list()
    echo_json(entries) if as_json else click.echo(render.schedules(entries))


@schedule.command("remove")
@click.argument("name", shell_complete=complete_schedule_name)
@click.pass_context
def schedule_remove(ctx, name):
    """Stop schedule NAME (the jobs it already enqueued stay).

    \b
    Example:
      queuectl schedule remove nightly
    """
    get_spool(ctx).schedule_remove(name)
    click.echo(f"{name} removed")


@cli.group(invoke_without_command=True)
@click.pass_context
def config(ctx):
    """Settings of this spool (config.json); running workers pick up changes. Alone: `config list`.

    \b
    Examples:
      queuectl config
      queuectl config set max-retries 5
      queuectl config set on-finish 'notify-send "queuectl: $QUEUECTL_JOB_ID $QUEUECTL_STATE"'
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(config_list)


@config.command("list")
@json_option
@click.pass_context
def config_list(ctx, as_json):
    """Every key and its value."""
    from . import config as configmod
    values = get_spool(ctx).config()
    if as_json:
        echo_json(values)
    else:
        click.echo(render.table([[k, render.short(v), configmod.KEYS[k][3]] for k, v in values.items()],
                                ("KEY", "VALUE", "")))


@config.command("get")
@click.argument("key")
@click.pass_context
def config_get(ctx, key):
    """Print one value."""
    from . import config as configmod
    value = get_spool(ctx).config()[configmod.canonical_key(key)]
    click.echo("" if value is None else value)  # the bare value: none is an empty line


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@click.pass_context
def config_set(ctx, key, value):
    """Set a value (checked first)."""
    from . import config as configmod
    name = configmod.canonical_key(key)
    click.echo(f"{name} = {_config_value(get_spool(ctx).set_config(name, value))}")


@config.command("unset")
@click.argument("key")
@click.pass_context
def config_unset(ctx, key):
    """Back to the default."""
    from . import config as configmod
    name = configmod.canonical_key(key)
    click.echo(f"{name} = {_config_value(get_spool(ctx).unset_config(name))} (default)")


def _config_value(value):
    return "none" if value is None else value


# ---------------------------------------------------------------- observability

@cli.command()
@json_option
@click.option("--prometheus", is_flag=True, help="The Prometheus text format (node_exporter textfile collector).")
@click.option("--sample", type=click.IntRange(0), default=1000, show_default=True,
              help="Read the records of at most N most recently finished jobs (runtime, retries).")
@click.pass_context
def metrics(ctx, as_json, prometheus, sample):
    """Totals per state, success rate, retries, runtimes, recent completions, waiting ages.

    Counts and ages come from file names (and mtimes), so it stays fast on big spools;
    runtimes and retries from the records of the most recently finished jobs only (--sample).

    \b
    Examples:
      queuectl metrics
      queuectl metrics --prometheus > queuectl.prom.tmp && mv queuectl.prom.tmp queuectl.prom
    """
    from . import metrics as metricsmod
    if as_json and prometheus:
        raise click.UsageError("--json and --prometheus: give one of them")
    info = metricsmod.collect(get_spool(ctx), sample=sample)
    if prometheus:
        click.echo(metricsmod.prometheus(info), nl=False)
    else:
        echo_json(info) if as_json else click.echo(render.metrics(info))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (anything but loopback exposes commands and logs).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port; 0 picks a free one (printed).")
@click.option("--refresh", type=click.IntRange(0, 3600), default=5, show_default=True,
              help="Seconds between page reloads; 0 = never.")
@click.pass_context
def dashboard(ctx, host, port, refresh):
    """A read-only web page of the spool: counts, workers, jobs per state, logs.

    Rendered on the server (no JavaScript), it reloads itself. JSON at /api/status and
    /api/metrics, Prometheus text at /metrics. It never writes to the spool.

    \b
    Example:
      queuectl dashboard --port 8080   # then open http://127.0.0.1:8080/
    """
    import errno
    import socket
    from . import dashboard as dashmod
    from .errors import SpoolError
    from .spool import Spool
    spool = Spool(ctx.obj["spool"], create=False)  # read-only: not even created
    try:
        ctx.exit(dashmod.serve(spool, host, port, refresh))
    except socket.gaierror:
        raise InvalidInput(f"--host: cannot listen on {host!r} (not an address of this host)") from None
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise SpoolError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        raise


def _colour_wanted():
    return render.use_colour(sys.stdout, os.environ)


class _ColourOut:
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


# ---------------------------------------------------------------- entry point

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


if __name__ == "__main__":  # `python -m queuectl.cli`, as other implementations are run
    entry()
