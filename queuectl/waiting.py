"""Why a pending job waits although it is due: reasons that no live worker can serve it now
(for `status` and `show`). Pure: the caller reads the record, the live workers and the queues'
settings."""
from .job import queue_of


def why_waiting(record, live, settings):
    """A sentence, or None when some live worker could run the job. `live`: registrations of
    the live workers (with their `queues` and `gpus`); `settings`: {queue: queues.Settings}."""
    if not live:
        return None  # `status` already says that no worker runs
    queue = queue_of(record)
    own = settings.get(queue)
    if own is not None and own.paused:
        return f"queue {queue} is paused (`queuectl resume --queue {queue}`)"
    if own is not None and own.limit == 0:
        return f"queue {queue} has limit 0"
    serving = [w for w in live if not w.get("queues") or queue in w["queues"]]
    if not serving:
        return f"no live worker serves queue {queue} (they were started with --queue)"
    needs = record.get("gpus") or 0
    offered = max(len(w.get("gpus") or ()) for w in serving)
    if needs > offered:
        return (f"needs {needs} GPUs; the live workers of its queue offer at most {offered} "
                "(`queuectl worker start --gpus`)")
    return None
