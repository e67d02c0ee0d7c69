"""Settings of a spool: `config`, `queue` (limits), and recurring jobs: `schedule`."""
import os

import click

from .. import render
from ..errors import InvalidInput
from .common import cli, complete_queue_name, complete_schedule_name, echo_json, get_spool, json_option, queue_option


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
    from ..job import parse_batch
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
    from .. import config as configmod
    values = get_spool(ctx).config()
    if as_json:
        echo_json(values)
    else:
        click.echo(render.table([[k, render.short(None if v is None else configmod.shown_value(v)),
                                  configmod.KEYS[k][3]] for k, v in values.items()],
                                ("KEY", "VALUE", "")))


@config.command("get")
@click.argument("key")
@click.pass_context
def config_get(ctx, key):
    """Print one value."""
    from .. import config as configmod
    value = get_spool(ctx).config()[configmod.canonical_key(key)]
    click.echo("" if value is None else configmod.shown_value(value))  # none is an empty line


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@click.pass_context
def config_set(ctx, key, value):
    """Set a value (checked first)."""
    from .. import config as configmod
    name = configmod.canonical_key(key)
    click.echo(f"{name} = {configmod.shown_value(get_spool(ctx).set_config(name, value))}")


@config.command("unset")
@click.argument("key")
@click.pass_context
def config_unset(ctx, key):
    """Back to the default."""
    from .. import config as configmod
    name = configmod.canonical_key(key)
    click.echo(f"{name} = {configmod.shown_value(get_spool(ctx).unset_config(name))} (default)")


@cli.group()
def queue():
    """Named queues: how many of a queue's jobs may run at once, on all hosts or on each.

    A job's queue is its `queue` field (enqueue --queue NAME; default: default).

    \b
    Examples:
      queuectl queue set deploy --limit 1          # one deploy at a time, on every host together
      queuectl queue set db --limit 2 --per-host 1
      queuectl queue list
    """


@queue.command("set")
@click.argument("name", shell_complete=complete_queue_name)
@click.option("--limit", metavar="N|none", help="At most N of its jobs run at once, across all hosts.")
@click.option("--per-host", metavar="N|none", help="At most N of its jobs run at once on any one host.")
@json_option
@click.pass_context
def queue_set(ctx, name, limit, per_host, as_json):
    """Set a queue's limits (a limit left out keeps its value; none removes it). Workers
    apply them to their next claims; running jobs finish."""
    changes = {k: v for k, v in (("limit", limit), ("per_host", per_host)) if v is not None}
    settings = get_spool(ctx).queue_set(name, **changes)
    if as_json:
        echo_json(settings)
    else:
        click.echo(f"queue {settings['name']}: limit {_limit(settings['limit'])}, "
                   f"per host {_limit(settings['per_host'])}" + (", paused" if settings["paused"] else ""))


def _limit(value):
    return "none" if value is None else value


@queue.command("list")
@json_option
@click.pass_context
def queue_list(ctx, as_json):
    """Every queue that has jobs or settings: limits, paused, jobs per state (reads every job)."""
    entries = get_spool(ctx).queue_list()
    echo_json(entries) if as_json else click.echo(render.queues(entries))


@queue.command("remove")
@click.argument("name", callback=queue_option, shell_complete=complete_queue_name)
@click.pass_context
def queue_remove(ctx, name):
    """Forget a queue's settings; refused while any job is in the queue."""
    get_spool(ctx).queue_remove(name)
    click.echo(f"queue {name}: settings removed")
