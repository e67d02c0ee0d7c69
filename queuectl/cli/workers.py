"""`worker start`, `worker run`, `worker stop`."""
import sys

import click

from .. import render
from .common import ColourOut, cli, colour_wanted, complete_queue_name, duration_option, get_spool, queue_option


def _gpus_option(ctx, param, value):
    """--gpus 0,1,3 (or none) -> [indices]; not given -> None (detected)."""
    from ..admission import parse_gpus
    if value is None:
        return None
    if value.strip().lower() == "none":
        return []
    try:
        return parse_gpus(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def serve_options(func):
    """--queue (repeatable) and --gpus: what the workers serve."""
    func = click.option("--gpus", "gpus", callback=_gpus_option, metavar="0,1,...",
                        help="The GPU indices this host offers to jobs (default: nvidia-smi -L, "
                             "else CUDA_VISIBLE_DEVICES, else none; 'none' for none).")(func)
    return click.option("--queue", "-q", "queues", multiple=True, callback=queue_option,
                        shell_complete=complete_queue_name,
                        help="Serve only this queue (repeatable; default: all).")(func)


@cli.group()
def worker():
    """Start and stop workers."""


@worker.command("start")
@click.option("--count", "-n", type=click.IntRange(1, 256), help="Worker processes (default: config worker-count).")
@click.option("--detach", is_flag=True, help="Run in the background and return.")
@click.option("--burst", is_flag=True, help="Exit once no job is due and none is running.")
@click.option("--for", "run_for", callback=duration_option, metavar="DURATION",
              help="Stop gracefully after this long: 30s, 10m, 2h, 1d (plain number: seconds).")
@serve_options
@click.pass_context
def worker_start(ctx, count, detach, burst, run_for, queues, gpus):
    """Start N workers under a supervisor; a line per job event.

    Ctrl+C: running jobs finish, then exit; a second Ctrl+C kills them (back to pending/).
    --detach runs them in the background; `queuectl worker stop` stops them from anywhere.

    \b
    Examples:
      queuectl worker start -n 4
      queuectl worker start --detach --for 8h
      queuectl worker start --burst        # run what is due, then exit
      queuectl worker start -n 2 --queue deploy --gpus 0,1
    """
    from .. import supervisor
    from ..worker import check_filesystem
    spool = get_spool(ctx)
    spool.layout.check_safe()
    check_filesystem(spool.layout)  # once here, rather than once per worker that would be refused
    count = count or spool.config()["worker-count"]
    serve = supervisor.serve_options(queues, gpus)
    if detach:
        pid, live, log_path = supervisor.start_detached(spool, count, burst=burst, run_for=run_for, serve=serve)
        until = f" for {run_for:g}s" if run_for else ""
        click.echo(f"started {len(live)} worker(s){until} under supervisor pid {pid}; log: {log_path}")
        return
    from .. import ingest
    ingest.ingest_all(spool)  # every `worker start` takes what waits in incoming/
    if not burst:
        click.echo("workers in the foreground: Ctrl+C stops them after their jobs (twice: at once); "
                   "--detach runs them in the background", err=True)
    code = supervisor.Supervisor(spool, count, burst=burst, emit=_emit_line, run_for=run_for, serve=serve).run()
    ctx.exit(code)


@worker.command("run")
@click.option("--burst", is_flag=True, help="Exit once no job is due now.")
@serve_options
@click.pass_context
def worker_run(ctx, burst, queues, gpus):
    """Run one worker in this process (what `worker start` runs N of; fits systemd)."""
    from ..worker import run_worker
    ctx.exit(run_worker(get_spool(ctx), burst=burst, out=ColourOut(sys.stdout) if colour_wanted() else None,
                        queues=queues or None, gpus=gpus))


def _emit_line(line):
    click.echo(render.colour_line(line) if colour_wanted() else line)


@worker.command("stop")
@click.option("--timeout", type=click.FloatRange(0), help="Give up waiting after S seconds (exit 1).")
@click.option("--now", is_flag=True, help="Kill running jobs; they go back to pending/ uncounted.")
@click.option("--no-wait", is_flag=True, help="Ask them to stop and return at once.")
@click.pass_context
def worker_stop(ctx, timeout, now, no_wait):
    """Stop every worker of this spool, on any host; running jobs finish first."""
    from .. import supervisor
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
