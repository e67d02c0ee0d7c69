"""Commands that read: status, list, show, logs, fsck, doctor, metrics, dashboard."""
import click

from .. import render
from ..errors import InvalidInput
from .common import (STATE_CHOICE, check_job_id, cli, complete_job_id, complete_queue_name, echo_json, get_spool,
                     json_option, queue_option)


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
@click.option("--queue", "-q", callback=queue_option, shell_complete=complete_queue_name, help="Only this queue's jobs.")
@json_option
@click.pass_context
def list_(ctx, state, limit, queue, as_json):
    """A table of jobs (pending in claim order)."""
    records = get_spool(ctx).list(state, limit=limit, queue=queue)
    echo_json(records) if as_json else click.echo(render.job_table(records))


@cli.command()
@click.argument("job_id", shell_complete=complete_job_id)
@json_option
@click.pass_context
def show(ctx, job_id, as_json):
    """One job's whole record and its log's path."""
    spool = get_spool(ctx)
    check_job_id(job_id)
    rec = spool.get(job_id)
    path = spool.log_path(job_id)
    why = spool.why_waiting(rec)
    if as_json:
        echo_json(dict(rec, log_path=path, **({"waiting": why} if why else {})))
    else:
        click.echo(render.record(rec, path) + (f"\nwaits:  {why}" if why else ""))


@cli.command()
@click.argument("job_id", shell_complete=complete_job_id)
@click.option("--follow", "-f", is_flag=True, help="Stream it until the job is completed or dead.")
@click.pass_context
def logs(ctx, job_id, follow):
    """The job's log: the output of every attempt."""
    from .. import logs as logmod
    spool = get_spool(ctx)
    check_job_id(job_id)
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
    from .. import fsck as fsckmod
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
    from .. import doctor as doctormod
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
    from .. import metrics as metricsmod
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
    from .. import dashboard as dashmod
    from ..errors import SpoolError
    from ..spool import Spool
    spool = Spool(ctx.obj["spool"], create=False)  # read-only: not even created
    try:
        ctx.exit(dashmod.serve(spool, host, port, refresh))
    except socket.gaierror:
        raise InvalidInput(f"--host: cannot listen on {host!r} (not an address of this host)") from None
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise SpoolError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        raise
