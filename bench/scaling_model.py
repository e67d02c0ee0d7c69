"""A small simulation of claim contention on a shared spool, to check docs/scaling.md's
model beyond the 3 hosts this machine can run.

    python3 bench/scaling_model.py [--jobs 4000] [--seconds-per-job 0.6] [--claim-ms 5]

H hosts x W workers drain a backlog of due jobs of one priority. What the model keeps of
the real worker (worker.py, pending.py):
- a worker's view of pending/ is the folder as it was at its last listing (each
  `rescan`, and whenever its view runs dry), minus the names that workers of its own host
  took since (inotify sees local changes at once; other hosts' only by listing again);
- a claim attempt costs `claim-ms`; it loses when the name is gone (another worker took it
  since this worker's last look), and the worker then tries again from its view;
- a won claim occupies the worker for `seconds-per-job` (the job, its finish and the next
  claim's bookkeeping: 0.6 s per worker is what 3 hosts x 4 workers reached on GlusterFS here).

Strategies: `head` (everyone takes the first name), `spread` (a draw among the first 16),
`share` (what pending.py and worker.py do: names split among the workers by a hash; a
worker steals from a share that lags by more than the rescan interval, or, when its own
share is empty, draws among all the due names it looked at (up to 256); it lists again
after 3 lost claims in a row), and `share-narrow` (the same, but stealing among the first
16 names only and without the listing after losses: what the wider draw is for).

Prints claims lost per job for each strategy and size. It models contention only: the
filesystem's own limit (metadata operations per second) is the throughput bound of
docs/scaling.md, not simulated here.
"""
import argparse
import bisect
import heapq
import random
import zlib

SPREAD = 16


class Worker:
    def __init__(self, host, rank):
        self.host, self.rank = host, rank
        self.view = []          # sorted job numbers as last listed
        self.next_look = 0.0
        self.losses_in_row = 0


def simulate(hosts, per_host, jobs, job_seconds, claim_seconds, rescan, strategy, seed=1):
    rng = random.Random(seed)
    count = hosts * per_host
    workers = [Worker(h, h * per_host + w) for h in range(hosts) for w in range(per_host)]
    same_host = {w.rank: [o for o in workers if o.host == w.host and o is not w] for w in workers}
    pending = set(range(jobs))
    owner = [zlib.crc32(str(j).encode()) % count for j in range(jobs)]
    due_at = [0.0] * jobs                    # the backlog is due at once
    lost = won = 0
    clock = [(rng.uniform(0, 0.05), w.rank) for w in workers]  # start-up jitter
    heapq.heapify(clock)
    while clock and pending:
        now, rank = heapq.heappop(clock)
        worker = workers[rank]
        if now >= worker.next_look or not worker.view or (strategy == "share" and worker.losses_in_row >= 3):
            worker.view = sorted(pending)
            worker.losses_in_row = 0
            now += 0.001 + 0.00002 * len(worker.view)  # a listing's cost
            worker.next_look = now + rescan
            if not worker.view:
                continue
        pick = choose(worker, strategy, owner, due_at, count, rescan, rng)
        job = worker.view.pop(pick)
        if job not in pending:
            lost += 1
            worker.losses_in_row += 1
            heapq.heappush(clock, (now + claim_seconds, rank))
            continue
        won += 1
        worker.losses_in_row = 0
        pending.discard(job)
        for other in same_host[rank]:  # inotify: this host's workers see the claim at once
            i = bisect.bisect_left(other.view, job)
            if i < len(other.view) and other.view[i] == job:
                other.view.pop(i)
        heapq.heappush(clock, (now + claim_seconds + job_seconds, rank))
    return lost / max(won, 1), won


def choose(worker, strategy, owner, due_at, count, lag, rng):
    view = worker.view
    if strategy == "head" or len(view) < 2:
        return 0
    head = min(SPREAD, len(view))
    if strategy == "spread":
        return rng.randrange(head)
    for i, job in enumerate(view[:256]):
        if owner[job] == worker.rank:
            older = [j for j in range(min(head, i)) if due_at[view[j]] < due_at[job] - lag]
            return rng.choice(older) if older else i
    return rng.randrange(head if strategy == "share-narrow" else min(len(view), 256))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--seconds-per-job", type=float, default=0.6, help="per worker, claim to next claim")
    parser.add_argument("--claim-ms", type=float, default=5.0, help="one claim attempt (a rename)")
    parser.add_argument("--rescan", type=float, default=2.0)
    parser.add_argument("--sizes", default="3x4,10x8,100x8", help="hosts x workers per host, comma-separated")
    args = parser.parse_args(argv)
    strategies = ("head", "spread", "share-narrow", "share")
    print(f"claims lost per job; {args.jobs} jobs, {args.seconds_per_job} s per job per worker, "
          f"{args.claim_ms} ms per claim attempt, rescan {args.rescan} s")
    print("| hosts x workers | " + " | ".join(strategies) + " |")
    print("|---|" + "---|" * len(strategies))
    for size in args.sizes.split(","):
        hosts, per_host = (int(x) for x in size.split("x"))
        jobs = max(args.jobs, hosts * per_host * 20)
        cells = [simulate(hosts, per_host, jobs, args.seconds_per_job, args.claim_ms / 1000, args.rescan, s)[0]
                 for s in strategies]
        print(f"| {hosts} x {per_host} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
