"""Commands that add and change jobs: enqueue, wait, retry, pause, resume, dlq, cancel, purge."""
import os
import shlex
import sys

import click

from .. import render
from ..errors import InvalidInput, QueuectlError
from .common import (Progress, check_job_id, cli, complete_job_id, echo_json, get_spool, json_option,
                     complete_queue_name, note_buried, queue_option, wait_for)


class _CommandWords(click.Command):
    """enqueue's parsing (docs/usage.md "enqueue"): queuectl's options may come before the
    command, or after a command given as one argument ("sleep 5" --max-retries 3); an option
    queuectl does not know belongs to the command once its first word is given; `--` ends
    queuectl's options. One of queuectl's options after a command of several words is refused:
    it could be the command's own (`gh pr list --json title`), and guessing would run something
    else. Only --help shows help: `-h` is the command's (`du -h`)."""

    def parse_args(self, ctx, args):
        first = self._first_word_of_several(args)
        if first is not None:  # every word from there is the command's, a `--` among them too
            args = args[:first] + ["--"] + args[first:]
        # the words after `--`: click drops the `--` itself, and they are the command's whatever they look like
        ctx.meta["words_after_dashes"] = len(args) - args.index("--") - 1 if "--" in args else 0
        return super().parse_args(ctx, args)

    def _first_word_of_several(self, args):
        """The index of the command's first word when the command has several words (None
        otherwise); a UsageError when one of queuectl's options comes after it."""
        takes_value = {}
        for param in self.params:
            if isinstance(param, click.Option):
                for opt in param.opts + param.secondary_opts:
                    takes_value[opt] = not param.is_flag and not param.count
        first, more_words, inside = None, 0, []
        i = 0
        while i < len(args) and (args[i] != "--" or first is not None):
            arg = args[i]
            name = arg.split("=", 1)[0] if arg.startswith("--") else arg[:2]
            if arg.startswith("-") and arg != "-" and name in takes_value:
                if first is not None:
                    inside.append(name)
                attached = "=" in arg if arg.startswith("--") else len(arg) > 2
                i += 2 if takes_value[name] and not attached else 1
                continue
            if first is None and not arg.startswith("-"):
                first = i
            elif first is not None:
                more_words += 1
                if arg == "--":
                    break  # the command's own `--`: what follows is its for sure
            i += 1
        if inside and more_words:
            raise click.UsageError(
                f"{inside[0]} comes after the words of the command, where it may be the command's own: "
                f"put queuectl's options before the command, and the command after -- "
                f"(queuectl enqueue {inside[0]} ... -- {args[first]} ...)")
        if first is not None and args[first].lstrip().startswith(("{", "[")):
            return None  # a JSON job: one argument, checked as such
        return first if more_words else None


def _env_option(ctx, param, values):
    """--env KEY=VALUE (repeatable) -> a dict; a bad one is a usage error."""
    from ..job import check_env_name
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
@click.option("--queue", "-q", callback=queue_option, shell_complete=complete_queue_name,
              help="The job's queue (default: default); see `queuectl queue`.")
@click.option("--gpus", type=click.IntRange(0, 64), help="GPUs the job needs on its host (default 0).")
@click.option("--wait", "wait_", is_flag=True, help="Then block until the jobs are final, as `wait` does (its exit codes).")
@json_option
@click.pass_context
def enqueue(ctx, words, file_, command, job_id, priority, run_at, max_retries, timeout, after, env,
            no_capture_env, on_finish, queue, gpus, wait_, as_json):
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
    from ..job import run_at_option
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
                 "on_finish": on_finish, "queue": queue, "gpus": gpus}
    with Progress("enqueue") as progress:
        # the CLI records the caller's directory and environment (docs/contract.md "The job record")
        records = get_spool(ctx).enqueue_many(items, overrides=overrides, defaults={"cwd": os.getcwd()},
                                              progress=progress, extra_env=env,
                                              captured_env=None if no_capture_env else _captured())
    if as_json:
        echo_json(records)
    else:
        for rec in records:
            click.echo(rec["id"])
    if wait_:
        sys.stdout.flush()
        ctx.exit(wait_for(get_spool(ctx), [rec["id"] for rec in records], None))


def _captured():
    """This shell's environment for the job; says on stderr which variables it cannot carry."""
    from ..job import capture_env
    captured = capture_env(os.environ)
    left = sorted(set(os.environ) - set(captured))
    if left:
        click.echo(f"note: not captured (not UTF-8 text): {', '.join(left[:10])}{' ...' if len(left) > 10 else ''}; "
                   "the job runs without them", err=True)
    return captured


def _enqueue_items(ctx, words, file_):
    """(the JSON items, the bare command or None) of enqueue's arguments."""
    from ..job import parse_batch
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
        check_job_id(job_id)
    ctx.exit(wait_for(get_spool(ctx), job_ids, timeout))


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
        check_job_id(job_id)
    spool = get_spool(ctx)
    records = spool.retry(job_ids)
    if as_json:
        echo_json(records)
    else:
        for rec in records:
            click.echo(rec["id"])
    note_buried(spool, [rec["id"] for rec in records])


@cli.command()
@click.option("--queue", "-q", callback=queue_option, shell_complete=complete_queue_name, help="Only this queue.")
@click.pass_context
def pause(ctx, queue):
    """Stop claiming: no worker on any host starts a new job until `resume`. Running jobs
    finish; dropped files are still filed. Persists across worker restarts. With --queue,
    only that queue's jobs wait.

    \b
    Examples:
      queuectl pause && queuectl status
      queuectl pause --queue deploy
    """
    info = get_spool(ctx).pause(queue)
    if queue:
        click.echo(f"queue {queue} paused; `queuectl resume --queue {queue}` to go on")
    else:
        click.echo(f"paused since {info.get('paused_at') or '?'}; `queuectl resume` to go on")


@cli.command()
@click.option("--queue", "-q", callback=queue_option, shell_complete=complete_queue_name, help="Only this queue.")
@click.pass_context
def resume(ctx, queue):
    """Claim again after `pause` (workers notice within half a second).

    \b
    Examples:
      queuectl resume
      queuectl resume --queue deploy
    """
    was = get_spool(ctx).resume(queue)
    what = f"queue {queue}" if queue else "the spool"
    click.echo(f"{what} resumed" if was else f"{what} was not paused; nothing to do")


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
    note_buried(spool, retried)


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
    with Progress("purge") as progress:
        count = get_spool(ctx).purge(state, older_than=older_than, progress=progress)
    click.echo(f"purged {count} {state} job(s)")
