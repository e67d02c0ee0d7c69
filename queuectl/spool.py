"""The Python API of a spool: `Spool(path)`. The CLI and the dashboard are thin layers over it.

    from queuectl import Spool
    spool = Spool("/tmp/spool")
    job = spool.enqueue("make backup", priority=1, run_at="+10m")
    spool.get(job["id"])["state"]          # 'pending'
    spool.cancel(job["id"])                 # -> dead/, last_error 'cancelled'

What each operation guarantees is written in docs/contract.md; how the files move is in
docs/protocol.md. The moves themselves are made by the move engine (moves.py), which the
workers and fsck use directly; nothing here touches a job file but through it.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Optional, Sequence

from . import config as configmod
from . import dependencies, fsutil, locks, names, queues, timeutil
from .schedules import Schedules
from .errors import FieldError, InvalidInput, JobNotFound, LostRace, WrongState
from .inventory import Inventory
from .job import STATES, State, check_id, check_queue, new_record, queue_of, type_name, validate_input
from .moves import Corrupt, Moves
from .paths import Layout, default_spool

Record = dict
WAIT_POLL = 0.2  # seconds between looks of Spool.wait
BURIED_SCAN_LIMIT = 10_000  # dead jobs read at most to name those a retry leaves buried
KILL_RECORD_GRACE = 2.0  # seconds `cancel --kill` reads dead/ID.json again for the worker's new record
Progress = Optional[Callable[[int, int], None]]


class Cancelled(dict):
    """The record `Spool.cancel` returns (now in dead/); `killed` says whether a running
    attempt was killed for it."""

    def __init__(self, record: Record, killed: bool) -> None:
        super().__init__(record)
        self.killed = killed


class Spool(Inventory):
    """A queuectl spool. `Spool(path)` creates the folders on first use (mode 0700);
    `create=False` only reads (the dashboard). Without a path: $QUEUECTL_SPOOL or
    ~/.queuectl/spool.

    Reading (inherited from inventory.Inventory): `get(id)`, `find(id)`, `list(state,
    limit)`, `names(state)`, `counts()`, `status()`, `workers()`, `log_path(id)`.
    """

    def __init__(self, path: Optional[str] = None, create: bool = True) -> None:
        self.layout = Layout(path or default_spool())
        self.path = self.layout.root
        if create:
            self.layout.create()
        self.moves = Moves(self.layout)  # the engine: workers, ingest and fsck move through it

    # ---------------------------------------------------------------- config

    def config(self) -> dict:
        """Every config key and its value (defaults filled in)."""
        return configmod.read(self.layout.config)

    def set_config(self, key: str, value: Any) -> Any:
        """Check and store one value; returns it as stored. FieldError/InvalidInput if refused."""
        name = configmod.canonical_key(key)
        number = configmod.parse_value(name, value)
        with locks.spool_lock(self.layout.config_lock):
            data = configmod.stored(self.layout.config)
            data[name] = number
            configmod.write(self.layout.config, self.layout.tmp, data)
        return number

    def unset_config(self, key: str) -> Any:
        """Back to the default; returns the default."""
        name = configmod.canonical_key(key)
        with locks.spool_lock(self.layout.config_lock):
            data = configmod.stored(self.layout.config)
            data.pop(name, None)
            data.pop(name.replace("-", "_"), None)
            configmod.write(self.layout.config, self.layout.tmp, data)
        return configmod.KEYS[name][0]

    # ---------------------------------------------------------------- enqueue

    def enqueue(self, command: Optional[str] = None, **fields: Any) -> Record:
        """Add one job; returns its record once it is durable. Raises FieldError or
        DuplicateJob (exit code 2), and then nothing was changed."""
        if command is not None:
            fields["command"] = command
        return self.enqueue_many([fields])[0]

    def enqueue_many(self, items: Sequence[Any], overrides: Optional[dict] = None,
                     defaults: Optional[dict] = None, progress: Progress = None,
                     extra_env: Optional[dict] = None, captured_env: Optional[dict] = None) -> list[Record]:
        """Add jobs all or nothing: every item is checked before anything is written.

        `overrides` replace fields of every item (the CLI's -c, --priority, ...), `defaults`
        fill fields an item lacks (the CLI's cwd), `extra_env` is added to every item's `env`
        (the CLI's --env). `captured_env`: the environment the jobs run with instead of the
        worker's (the CLI passes its caller's; see job.capture_env). `progress(done, total)`,
        if given, is called while the job files are written. Returns the records ([] for no items)."""
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        if not items:
            return []
        if "id" in overrides and len(items) > 1:
            raise InvalidInput("--id: cannot give one id to several jobs")
        now = timeutil.now()
        config_defaults = {"max_retries": self.config()["max-retries"]}
        records, seen = [], set()
        for index, item in enumerate(items):
            where = f"job {index + 1}" if len(items) > 1 else "job"
            if not isinstance(item, dict):
                raise FieldError(where, f"must be a JSON object, got {type_name(item)}")
            item = {**(defaults or {}), **item, **overrides}
            if extra_env:
                item["env"] = {**item["env"], **extra_env} if isinstance(item.get("env"), dict) else dict(extra_env)
            try:
                fields = validate_input(item, config_defaults, now=now)
            except FieldError as exc:
                if len(items) > 1:
                    raise FieldError(f"{where}: {exc.field}", str(exc).split(": ", 1)[1]) from None
                raise
            record = new_record(dict(fields, captured_env=captured_env), now)
            if record["id"] in seen:
                raise FieldError(f"{where}: id", f"{record['id']!r} appears twice in the batch")
            seen.add(record["id"])
            records.append(record)
        dependencies.place(self, records, where=lambda i: f"job {i + 1}: after" if len(items) > 1 else "after")
        self.moves.store_new(records, progress)
        return records

    # ---------------------------------------------------------------- changing jobs

    def cancel(self, job_id: str, kill: bool = False, timeout: float = 30.0) -> Cancelled:
        """A pending or failed job goes to dead/ with last_error 'cancelled'. A running one
        only with `kill=True`: its worker, on whichever host, kills its process group, and
        this waits up to `timeout` seconds for the job to reach dead/.

        Raises JobNotFound, or WrongState naming the job's state (running without `kill`,
        already final, did not stop in time, ended by itself first)."""
        check_id(job_id, "ID")
        found = self.find(job_id, patient=True)
        if found and found[0] == State.PROCESSING:
            if not kill:
                raise WrongState(f"job {job_id!r} is processing (running); use --kill to kill it")
            return Cancelled(self._kill_running(job_id, found[1], timeout), True)
        state, held = self.moves.find_held(job_id, (State.BLOCKED, State.PENDING, State.FAILED))
        if held is None:
            raise WrongState(f"job {job_id!r} is {state}; only blocked, pending or failed jobs can be cancelled"
                             + (" (use --kill for a running one)" if state == State.PROCESSING else ""))
        record = dict(held.record, last_error="cancelled", run_at=None,
                      finished_at=timeutil.iso(timeutil.now()))
        try:
            moved = self.moves.move(held, State.DEAD, names.final_name(job_id), record, kind="cancel")
        except BaseException:
            held.close()
            raise
        return Cancelled(moved.record, False)

    def _kill_running(self, job_id: str, processing_name: str, timeout: float) -> Record:
        """Ask the job's worker to kill it (a request file in workers/, seen on any host), then
        wait until the job has left processing/."""
        from . import registry
        owner = names.parse_processing(processing_name)
        if owner is None:
            raise WrongState(f"job {job_id!r}: processing/{processing_name} is not a worker's name")
        registry.request_cancel(self.layout, registry.worker_name(owner.host, owner.pid), job_id, processing_name)
        deadline = time.monotonic() + timeout
        found = self.find(job_id, patient=True)
        while found and found[0] == State.PROCESSING and time.monotonic() < deadline:
            time.sleep(0.05)
            found = self.find(job_id, patient=True)
        if found and found[0] == State.PROCESSING:
            raise WrongState(f"job {job_id!r} did not stop within {timeout:g}s (still running)")
        if found and found[0] == State.DEAD:
            # the worker's move renames the file into dead/, then its new record over it: on
            # a network filesystem the old record may still be read there for a while
            settle = time.monotonic() + KILL_RECORD_GRACE
            while True:
                record = self.get(job_id)
                if record.get("last_error") == "cancelled":
                    return record
                if time.monotonic() >= settle:
                    break
                time.sleep(0.05)
        raise WrongState(f"job {job_id!r} ended before it could be killed (state {found and found[0]})")

    def retry_dead(self, job_id: str) -> Record:
        """Move one dead job back to pending/ with attempts 0 and run_at now."""
        return self._run_again(job_id, (State.DEAD,), kind="dlq-retry")

    def _run_again(self, job_id: str, states: tuple, kind: str) -> Record:
        state, held = self.moves.find_held(job_id, states)
        if held is None:
            raise WrongState(f"job {job_id!r} is {state}, not {' or '.join(map(str, states))}")
        now = timeutil.now()
        record = dict(held.record, attempts=0, run_at=timeutil.iso(now), exit_code=None)
        if dependencies.verdict(self, record.get("after")) == ("release", None):
            dst_state, dst_name = State.PENDING, self.moves.pending_name(record, now)
        else:  # it waits for its dependencies again (a dead one buries it again)
            dst_state, dst_name = State.BLOCKED, names.final_name(job_id)
        try:
            moved = self.moves.move(held, dst_state, dst_name, record, kind=kind)
        except BaseException:
            held.close()
            raise
        return moved.record

    def retry(self, job_ids: Iterable[str]) -> list[Record]:
        """`retry`: run finished jobs again, as pueue's restart: each named completed, failed or
        dead job goes back to pending/ with attempts 0, due now (its log keeps the earlier
        attempts). All or nothing: every id is checked first. Returns the new records."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            raise InvalidInput("give at least one job id")
        for job_id in ids:
            check_id(job_id, "ID")
            found = self.find(job_id, patient=True)
            if found is None:
                raise JobNotFound(job_id)
            if found[0] not in RETRYABLE:
                raise WrongState(f"job {job_id!r} is {found[0]}, not completed, failed or dead; nothing was retried")
        return [self._run_again(job_id, RETRYABLE, kind="retry") for job_id in ids]

    def dlq_retry(self, job_ids: Optional[Iterable[str]] = None) -> list[str]:
        """`dlq retry`: the named dead jobs (None: every dead job) back to pending/. All or
        nothing: every id is checked to be dead before any moves. Returns the ids moved."""
        if job_ids is None:
            ids = [record["id"] for record in self.list(State.DEAD)]
        else:
            ids = list(dict.fromkeys(job_ids))  # each once
            for job_id in ids:
                check_id(job_id, "ID")
                found = self.find(job_id, patient=True)
                if found is None:
                    raise JobNotFound(job_id)
                if found[0] != State.DEAD:
                    hint = f"; to run it again: queuectl retry {job_id}" if found[0] in RETRYABLE else ""
                    raise WrongState(f"job {job_id!r} is {found[0]}, not dead; nothing was retried{hint}")
        for job_id in ids:
            self.retry_dead(job_id)
        return ids

    def buried_for(self, job_ids: Iterable[str], limit: int = BURIED_SCAN_LIMIT) -> list[str]:
        """Ids of dead jobs whose last_error is `dependency ID dead` for one of `job_ids` (a
        retry of ID does not revive them). Reads dead/ records; [] when dead/ holds more
        than `limit` jobs (the scan would cost more than the note is worth)."""
        reasons = {f"dependency {job_id} dead" for job_id in job_ids}
        dead = self.names(State.DEAD)
        if not reasons or len(dead) > limit:
            return []
        out = []
        for name in dead:
            try:
                record = fsutil.read_json(os.path.join(self.layout.dead, name))
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and record.get("last_error") in reasons:
                out.append(record["id"])
        return out

    def wait(self, job_ids: Iterable[str], timeout: Optional[float] = None,
             poll: float = WAIT_POLL) -> WaitResult:
        """Block until every named job is final (completed or dead), or `timeout` seconds
        have passed. Unknown ids raise JobNotFound before any wait. Jobs run on any host are
        seen: the folders are looked at every `poll` seconds (a job's final move is a rename
        into completed/ or dead/, which every host sees)."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            raise InvalidInput("give at least one job id")
        for job_id in ids:
            check_id(job_id, "ID")
            if self.find(job_id, patient=True) is None:
                raise JobNotFound(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        final: dict = {}
        while True:
            for job_id in ids:
                if job_id in final:
                    continue
                try:
                    record = self.get(job_id)
                except JobNotFound:  # purged once final, or between two folders: look again
                    continue
                if record["state"] in FINAL:
                    final[job_id] = record
            waiting = [i for i in ids if i not in final]
            if not waiting:
                return WaitResult({i: final[i] for i in ids}, [])
            if deadline is not None and time.monotonic() >= deadline:
                return WaitResult({i: final[i] for i in ids if i in final}, waiting)
            pause = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            time.sleep(pause)

    # ---------------------------------------------------------------- pause

    def pause(self, queue: Optional[str] = None) -> dict:
        """`pause`: no worker on any host claims a job until resume(); running jobs finish,
        dropped files are still filed. Persistent (a file in the spool). Returns its record.
        With `queue`: only that queue's jobs wait (its settings say paused)."""
        if queue is not None:
            return queues.update(self.layout, queue, paused=True).as_dict()
        info = {"paused_at": timeutil.iso(timeutil.now()), "by": f"{names.hostname()}:{os.getpid()}"}
        existing = self.paused()
        if existing:
            return existing
        tmp = os.path.join(self.layout.tmp, f".paused-{os.getpid()}")
        fsutil.write_file(tmp, fsutil.dumps(info))
        os.rename(tmp, self.layout.paused)
        fsutil.fsync_dir(self.layout.root)
        return info

    def resume(self, queue: Optional[str] = None) -> bool:
        """`resume`: workers claim again. False when the spool (or `queue`) was not paused."""
        if queue is not None:
            was = queues.read(self.layout, check_queue(queue, "--queue")).paused
            queues.update(self.layout, queue, paused=False)
            return was
        try:
            os.unlink(self.layout.paused)
        except FileNotFoundError:
            return False
        fsutil.fsync_dir(self.layout.root)
        return True

    def paused(self) -> Optional[dict]:
        """The pause record ({paused_at, by}) when the spool is paused, else None."""
        try:
            info = fsutil.read_json(self.layout.paused)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"paused_at": None, "by": None}  # unreadable: paused all the same
        return info if isinstance(info, dict) else {"paused_at": None, "by": None}

    # ---------------------------------------------------------------- queues

    def queue_set(self, name: str, **limits: Any) -> dict:
        """`queue set`: a queue's `limit` (all hosts) and `per_host` limit; None removes one,
        a key left out keeps its value. Returns the queue's settings."""
        unknown = set(limits) - {"limit", "per_host"}
        if unknown:
            raise InvalidInput(f"queue settings: unknown {', '.join(sorted(unknown))}")
        return queues.update(self.layout, name, **limits).as_dict()

    def queue_list(self) -> list[dict]:
        """Every queue that has jobs or settings: name, limit, per_host, paused, running (slots
        held now on all hosts, for a limited queue), counts per state. Reads every record."""
        from .slots import Slots
        settings = queues.read_all(self.layout)
        counts: dict = {}
        for record in self.list():
            per_state = counts.setdefault(queue_of(record), dict.fromkeys(STATES, 0))
            per_state[record.get("state")] = per_state.get(record.get("state"), 0) + 1
        slots = Slots(self.layout, names.hostname())
        out = []
        for name in sorted(set(settings) | set(counts)):
            one = settings.get(name) or queues.Settings(name)
            out.append({"name": name, "limit": one.limit, "per_host": one.per_host, "paused": one.paused,
                        "running_slots": slots.held(one) if one.limit is not None else None,
                        "counts": counts.get(name, dict.fromkeys(STATES, 0))})
        return out

    def queue_remove(self, name: str) -> None:
        """`queue remove`: forget a queue's settings; refused while any job is in the queue."""
        queues.remove(self.layout, name, lambda q: any(queue_of(r) == q for r in self.list()))

    # ---------------------------------------------------------------- schedules

    def schedule_add(self, name: str, cron: str, command: Optional[str] = None,
                     defaults: Optional[dict] = None, **fields: Any) -> dict:
        """A recurring job: at each time of the 5-field cron expression `cron` (UTC) the workers
        enqueue one job from these fields (those of enqueue but id, run_at, after), with id
        NAME-YYYYMMDDTHHMMZ. Returns what schedule_list shows for it."""
        if command is not None:
            fields["command"] = command
        template = {**(defaults or {}), **{k: v for k, v in fields.items() if v is not None}}
        template.setdefault("max_retries", self.config()["max-retries"])
        return Schedules(self.layout).add(name, cron, template)

    def schedule_list(self) -> list[dict]:
        """Every schedule: name, cron, command, next occurrence, last fired id, fired, skipped."""
        return Schedules(self.layout).list()

    def schedule_remove(self, name: str) -> None:
        """Stop a schedule; the jobs it has enqueued stay."""
        Schedules(self.layout).remove(name)

    def purge(self, state: str, older_than: float | str | None = None, now: Optional[float] = None,
              progress: Progress = None) -> int:
        """Delete completed or dead jobs and their logs; `older_than` (seconds, or a duration
        such as '12h' or '7d') keeps those finished more recently. Returns how many went.
        Each file is locked first, so a job being moved is skipped."""
        if state not in (State.COMPLETED, State.DEAD):
            raise FieldError("state", f"must be completed or dead, got {state!r}")
        if isinstance(older_than, str):
            older_than = timeutil.parse_duration(older_than, "--older-than")
        now = timeutil.now() if now is None else now
        deleted = 0
        todo = self.names(state)
        for done, name in enumerate(todo, 1):
            if progress and done % 200 == 0:
                progress(done, len(todo))
            try:
                held = self.moves.lock(state, name)
            except (LostRace, Corrupt):
                continue
            try:
                if older_than is not None and now - _finished_at(held) < older_than:
                    continue
                self.moves.delete(held)
                deleted += 1
            finally:
                held.close()
        if deleted:
            self.moves.sync_folder(state)
        return deleted


class WaitResult(dict):
    """What `Spool.wait` found: job id -> its record (final ones), `unfinished` (ids still not
    final when the timeout ran out), and `ok` (every job completed)."""

    def __init__(self, records: dict, unfinished: list) -> None:
        super().__init__(records)
        self.unfinished = unfinished

    @property
    def ok(self) -> bool:
        return not self.unfinished and all(r["state"] == State.COMPLETED for r in self.values())

    @property
    def dead(self) -> list:
        return [r for r in self.values() if r["state"] == State.DEAD]


RETRYABLE = (State.COMPLETED, State.FAILED, State.DEAD)
FINAL = (State.COMPLETED, State.DEAD)


def _finished_at(held) -> float:
    stamp = held.record.get("finished_at") or held.record.get("updated_at")
    try:
        return timeutil.parse_iso(stamp)
    except (TypeError, ValueError):
        return os.fstat(held.fd).st_mtime
