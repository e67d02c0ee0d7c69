"""Recycled inodes for a worker's moves (queuectl/pool.py), in process."""
import json
import os

from queuectl import Spool, fsck, pool, registry


def worker_spool(tmp_path, owner="h_1"):
    spool = Spool(str(tmp_path / "spool"))
    spool.moves.pool = pool.Pool(spool.layout.tmp, owner)
    return spool


def cycle(spool, n):
    for record in spool.enqueue_many([{"command": "true"} for _ in range(n)]):
        name = spool.find(record["id"])[1]
        held = spool.moves.claim(name, "h", 1)
        spool.moves.finish(held, 0, None, backoff=(2, 60, 0))
        held.close()


def test_moves_reuse_inodes_instead_of_creating_them(tmp_path):
    spool = worker_spool(tmp_path)
    cycle(spool, 3)
    tmp = spool.layout.tmp
    spares = {os.stat(os.path.join(tmp, n)).st_ino for n in os.listdir(tmp)}
    assert spares and all(n.startswith("free-h_1-") for n in os.listdir(tmp))
    records = spool.enqueue_many([{"command": "true"} for _ in range(5)])
    pending_inodes = {os.stat(os.path.join(spool.layout.pending, spool.find(r["id"])[1])).st_ino for r in records}
    for r in records:
        held = spool.moves.claim(spool.find(r["id"])[1], "h", 1)
        spool.moves.finish(held, 0, None, backoff=(2, 60, 0))
        held.close()
    final = {os.stat(os.path.join(spool.layout.completed, f"{r['id']}.json")).st_ino for r in records}
    # every completed record sits in an inode that existed before: a spare or an enqueued file
    assert final <= spares | pending_inodes
    assert len(os.listdir(tmp)) <= pool.LIMIT


def test_recycled_records_are_whole_and_right(tmp_path):
    spool = worker_spool(tmp_path)
    cycle(spool, 20)
    for name in os.listdir(spool.layout.completed):
        with open(os.path.join(spool.layout.completed, name)) as fh:
            record = json.load(fh)
        assert record["id"] + ".json" == name
        assert record["state"] == "completed" and record["attempts"] == 1 and record["exit_code"] == 0


def test_a_reader_of_a_displaced_file_never_gets_another_jobs_record(tmp_path):
    spool = worker_spool(tmp_path)
    a, b = spool.enqueue_many([{"command": "true", "id": "a"}, {"command": "true", "id": "b"}])
    path_a = os.path.join(spool.layout.pending, spool.find("a")[1])
    stale_fd = os.open(path_a, os.O_RDONLY)  # a reader that opened a's pending file just before
    try:
        for job in ("a", "b"):
            held = spool.moves.claim(spool.find(job)[1], "h", 1)
            spool.moves.finish(held, 0, None, backoff=(2, 60, 0))
            held.close()
        content = json.loads(os.pread(stale_fd, 65536, 0))
        assert content["id"] in ("a", "b")  # the inode may now hold any record...
        assert spool.get("a")["id"] == "a" and spool.get("b")["id"] == "b"  # ...reads check the id
    finally:
        os.close(stale_fd)


def test_close_frees_the_spares(tmp_path):
    spool = worker_spool(tmp_path)
    cycle(spool, 4)
    spool.moves.pool.close()
    assert os.listdir(spool.layout.tmp) == []


def test_recovery_removes_spares_of_a_dead_worker_only(tmp_path):
    spool = worker_spool(tmp_path, owner="deadhost_999999")
    cycle(spool, 2)
    live_fd = registry.register(spool.layout, "livehost", 4242)
    try:
        live = pool.Pool(spool.layout.tmp, registry.worker_name("livehost", 4242))
        spool.moves.pool = live
        cycle(spool, 2)
        before = sorted(os.listdir(spool.layout.tmp))
        assert any(n.startswith("free-deadhost_999999-") for n in before)
        fsck.recover(spool)
        after = sorted(os.listdir(spool.layout.tmp))
        assert not any(n.startswith("free-deadhost_999999-") for n in after)
        assert [n for n in before if n.startswith("free-livehost_4242-")] == after
        assert all(p.kind != "tmp-leftover" for p in fsck.check(spool))
    finally:
        os.close(live_fd)


def test_owner_of_names():
    assert pool.owner_of("free-host.a_12-3") == "host.a_12"
    assert pool.owner_of("free--3") is None
    assert pool.owner_of("mv-x.json") is None


def test_durable_moves_sync_every_move_and_recycle_nothing(tmp_path, monkeypatch):
    spool = worker_spool(tmp_path)
    spool.moves.durable_moves = True
    records = spool.enqueue_many([{"command": "true"} for _ in range(3)])
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    for r in records:
        held = spool.moves.claim(spool.find(r["id"])[1], "h", 1)
        spool.moves.finish(held, 0, None, backoff=(2, 60, 0))
        held.close()
    assert os.listdir(spool.layout.tmp) == []  # no spare inode kept: a rewrite in place is not durable
    lay = spool.layout
    # the 3 finishes: a new record, then the folder it went to and the one it left; the 3
    # claims write no record, and sync both folders of their one rename
    assert sum(1 for p in synced if os.path.dirname(p) == lay.tmp) == 3
    assert synced.count(lay.processing) == 6 and synced.count(lay.completed) == 3 and synced.count(lay.pending) == 3


def test_a_worker_follows_the_durable_moves_setting(tmp_path, monkeypatch):
    from queuectl import worker as workermod
    clock = [1000.0]
    monkeypatch.setattr(workermod.time, "monotonic", lambda: clock[0])
    spool = Spool(str(tmp_path / "spool"))
    worker = workermod.Worker(spool, burst=True)
    worker.config()
    assert spool.moves.durable_moves is False
    spool.set_config("durable-moves", "on")
    clock[0] += workermod.CONFIG_LOOK  # a busy worker looks again once a second
    worker.config()
    assert spool.moves.durable_moves is True
