"""The drop box (docs/contract.md "Dropping files"): queuectl.ingest, in process."""
import json
import os
import threading
import time

import pytest

from helpers import drop, job_files, wait_until
from queuectl import ingest, names
from queuectl.errors import JobNotFound
from queuectl.job import ID_PATTERN, new_id
from queuectl.moves import MAX_DROP_BYTES


def drop_job(spool, name, job):
    return drop(spool.path, name, json.dumps(job))


def incoming(spool):
    return sorted(os.listdir(os.path.join(spool.path, "incoming")))


def rejected(spool):
    return sorted(os.listdir(os.path.join(spool.path, "rejected")))


def error_text(spool, name):
    with open(os.path.join(spool.path, "rejected", name + ".error")) as fh:
        return fh.read()


def run_bounded(func, timeout=10):
    """Run func() in a thread; fail (instead of hanging) if it does not return in time."""
    result = {}

    def target():
        try:
            result["value"] = func()
        except BaseException as exc:  # pragma: no cover - re-raised below
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{func} blocked for more than {timeout}s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def unblock_fifo(path):
    """If someone is stuck opening the FIFO for reading, let them go."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------- valid files

def test_a_dropped_job_with_its_own_id_becomes_pending(spool):
    drop_job(spool, "a.json", {"id": "mine", "command": "echo hi", "priority": 3, "run_at": "+1h"})
    accepted, rej = ingest.ingest_all(spool)
    assert rej == []
    assert [r["id"] for r in accepted] == ["mine"]
    assert incoming(spool) == []
    files = job_files(spool.path, "pending")
    assert len(files) == 1 and names.parse_pending(files[0])[3] == "mine"
    rec = spool.get("mine")
    assert rec["state"] == "pending" and rec["command"] == "echo hi" and rec["priority"] == 3
    assert rec == accepted[0]
    assert spool.counts()["scheduled"] == 1
    assert [n for n in os.listdir(os.path.join(spool.path, "tmp")) if n.startswith("ingest-")] == []


def test_a_dropped_job_without_id_gets_a_generated_one(spool):
    before = new_id()
    drop_job(spool, "noid.json", {"command": "echo hi"})
    accepted, _ = ingest.ingest_all(spool)
    assert len(accepted) == 1
    job_id = accepted[0]["id"]
    assert ID_PATTERN.fullmatch(job_id) and job_id > before
    assert spool.get(job_id)["command"] == "echo hi"
    assert spool.get(job_id)["max_retries"] == 3


def test_dropped_job_takes_config_default_max_retries(spool):
    spool.set_config("max-retries", 9)
    drop_job(spool, "x.json", {"command": "true"})
    accepted, _ = ingest.ingest_all(spool)
    assert accepted[0]["max_retries"] == 9


def test_several_files_are_all_taken_and_reported(spool):
    for i in range(5):
        drop_job(spool, f"j{i}.json", {"id": f"j{i}", "command": "true"})
    drop(spool.path, "bad.json", "{")
    seen = []
    accepted, rej = ingest.ingest_all(spool, report=lambda kind, name, value: seen.append((kind, name)))
    assert sorted(r["id"] for r in accepted) == [f"j{i}" for i in range(5)]
    assert len(rej) == 1
    assert sorted(seen) == sorted([("accepted", f"j{i}.json") for i in range(5)] + [("rejected", "bad.json")])
    assert incoming(spool) == []


def test_a_file_of_exactly_one_mebibyte_is_accepted(spool):
    body = json.dumps({"id": "big", "command": "true"})
    drop(spool.path, "big.json", body + " " * (MAX_DROP_BYTES - len(body)))
    assert os.path.getsize(os.path.join(spool.path, "incoming", "big.json")) == MAX_DROP_BYTES
    accepted, rej = ingest.ingest_all(spool)
    assert rej == [] and [r["id"] for r in accepted] == ["big"]


# ---------------------------------------------------------------- ignored names

@pytest.mark.parametrize("name", [".hidden.json", ".partial", "job.json.tmp", "job.txt", "job", "job.JSON"])
def test_dot_names_and_non_json_names_are_ignored(spool, name):
    path = drop(spool.path, name, json.dumps({"command": "true"}))
    assert ingest.ingest_all(spool) == ([], [])
    assert incoming(spool) == [name]
    with open(path) as fh:
        assert json.load(fh) == {"command": "true"}
    assert rejected(spool) == []
    assert spool.counts()["pending"] == 0


# ---------------------------------------------------------------- rejected files

def assert_rejected(spool, name, original=None, reason_words=(), pending=0):
    assert name in rejected(spool)
    assert name + ".error" in rejected(spool)
    text = error_text(spool, name)
    for word in reason_words:
        assert word.lower() in text.lower(), (word, text)
    if original is not None:
        with open(os.path.join(spool.path, "rejected", name), "rb") as fh:
            assert fh.read() == original
    assert name not in incoming(spool)
    assert spool.counts()["pending"] == pending
    return text


@pytest.mark.parametrize("content, words", [
    (b"{not json", ["invalid JSON"]),
    (b"", ["invalid JSON"]),
    (b"\xff\xfe\x00garbage", ["UTF-8"]),
    (b'["echo hi"]', ["job", "object"]),
    (b'{"command": ""}', ["command"]),
    (b'{"command": "true", "priority": 1000}', ["priority"]),
    (b'{"command": "true", "id": "../escape"}', ["id"]),
    (b'{"command": "true", "state": "completed"}', ["state", "unknown field"]),
    (b'{"command": "true", "run_at": "someday"}', ["run_at"]),
    (b'{"id": "x"}', ["command"]),
    (b"[" * 100000, ["JSON"]),
])
def test_invalid_files_are_rejected_with_a_reason(spool, content, words):
    drop(spool.path, "bad.json", content)
    accepted, rej = ingest.ingest_all(spool)
    assert accepted == [] and len(rej) == 1
    assert_rejected(spool, "bad.json", content, words)
    assert not os.path.exists(os.path.join(os.path.dirname(spool.path), "escape"))


def test_duplicate_id_is_rejected_naming_the_state(spool):
    spool.enqueue("echo first", id="dup")
    content = json.dumps({"id": "dup", "command": "echo second"}).encode()
    drop(spool.path, "dup.json", content)
    accepted, rej = ingest.ingest_all(spool)
    assert accepted == [] and len(rej) == 1
    text = assert_rejected(spool, "dup.json", None, ["dup", "already exists", "pending"], pending=1)
    with open(os.path.join(spool.path, "rejected", "dup.json"), "rb") as fh:
        assert fh.read() == content
    assert "dup" in text
    assert spool.get("dup")["command"] == "echo first"
    assert len(job_files(spool.path, "pending")) == 1


def test_file_over_one_mebibyte_is_rejected(spool):
    body = json.dumps({"command": "true"})
    content = (body + " " * (MAX_DROP_BYTES + 1 - len(body))).encode()
    drop(spool.path, "huge.json", content)
    accepted, rej = ingest.ingest_all(spool)
    assert accepted == [] and len(rej) == 1
    assert_rejected(spool, "huge.json", content, ["too large"])


def test_a_folder_named_x_json_is_rejected(spool):
    folder = os.path.join(spool.path, "incoming", "x.json")
    os.mkdir(folder)
    with open(os.path.join(folder, "inner.json"), "w") as fh:
        fh.write('{"command": "true"}')
    accepted, rej = run_bounded(lambda: ingest.ingest_all(spool))
    assert accepted == [] and len(rej) == 1
    assert_rejected(spool, "x.json", None, ["folder"])
    assert os.path.isdir(os.path.join(spool.path, "rejected", "x.json"))
    assert os.listdir(os.path.join(spool.path, "rejected", "x.json")) == ["inner.json"]


def test_a_fifo_is_rejected_without_blocking(spool):
    fifo = os.path.join(spool.path, "incoming", "pipe.json")
    os.mkfifo(fifo, 0o600)
    try:
        accepted, rej = run_bounded(lambda: ingest.ingest_all(spool), timeout=10)
    finally:
        unblock_fifo(fifo)
    assert accepted == [] and len(rej) == 1
    assert_rejected(spool, "pipe.json", None, ["FIFO"])
    import stat
    assert stat.S_ISFIFO(os.lstat(os.path.join(spool.path, "rejected", "pipe.json")).st_mode)


def test_a_symlink_to_a_fifo_outside_is_rejected_without_blocking(spool, tmp_path):
    target = tmp_path / "outside.fifo"
    os.mkfifo(target, 0o600)
    link = os.path.join(spool.path, "incoming", "link.json")
    os.symlink(target, link)
    try:
        accepted, rej = run_bounded(lambda: ingest.ingest_all(spool), timeout=10)
    finally:
        unblock_fifo(str(target))
    assert accepted == [] and len(rej) == 1
    assert_rejected(spool, "link.json", None, ["symlink"])
    moved = os.path.join(spool.path, "rejected", "link.json")
    assert os.path.islink(moved) and os.readlink(moved) == str(target)
    import stat
    assert stat.S_ISFIFO(os.lstat(target).st_mode)


def test_a_symlink_to_a_file_outside_is_not_followed(spool, tmp_path):
    target = tmp_path / "secret.json"
    content = json.dumps({"id": "stolen", "command": "cat /etc/shadow"})
    target.write_text(content)
    # relatime updates atime on read when atime < mtime: an old atime shows any read
    os.utime(target, (1_000_000, 2_000_000))
    probe = tmp_path / "probe"
    probe.write_text("x")
    os.utime(probe, (1_000_000, 2_000_000))
    probe.read_text()
    atime_works = os.stat(probe).st_atime != 1_000_000

    os.symlink(target, os.path.join(spool.path, "incoming", "link.json"))
    accepted, rej = run_bounded(lambda: ingest.ingest_all(spool))
    assert accepted == [] and len(rej) == 1
    assert_rejected(spool, "link.json", None, ["symlink"])
    assert os.path.islink(os.path.join(spool.path, "rejected", "link.json"))
    st = os.stat(target)
    if atime_works:
        assert st.st_atime == 1_000_000, "the symlink's target was read"
    assert st.st_mtime == 2_000_000
    with pytest.raises(JobNotFound):
        spool.get("stolen")
    with open(target) as fh:
        assert fh.read() == content


def test_a_second_rejected_file_of_the_same_name_gets_a_unique_suffix(spool):
    contents = [b"{first", b"{second", b"{third"]
    for c in contents:
        drop(spool.path, "same.json", c)
        ingest.ingest_all(spool)
    names_ = rejected(spool)
    assert names_ == sorted(["same.json", "same.json.error", "same.json.1", "same.json.1.error",
                             "same.json.2", "same.json.2.error"])
    for name, c in zip(["same.json", "same.json.1", "same.json.2"], contents):
        with open(os.path.join(spool.path, "rejected", name), "rb") as fh:
            assert fh.read() == c
        assert "invalid JSON" in error_text(spool, name)


def test_an_existing_error_file_is_not_overwritten(spool):
    with open(os.path.join(spool.path, "rejected", "z.json.error"), "w") as fh:
        fh.write("somebody's note\n")
    drop(spool.path, "z.json", b"{")
    ingest.ingest_all(spool)
    assert error_text(spool, "z.json") == "somebody's note\n"
    assert "z.json.1" in rejected(spool) and "invalid JSON" in error_text(spool, "z.json.1")


def test_nothing_dropped_is_ever_deleted(spool):
    """Every dropped file ends up as a job or in rejected/, never lost."""
    drop_job(spool, "ok.json", {"id": "ok1", "command": "true"})
    drop_job(spool, "dup.json", {"id": "ok1", "command": "true"})
    drop(spool.path, "bad.json", b"nope")
    accepted, rej = ingest.ingest_all(spool)
    assert len(accepted) + len(rej) == 3
    assert incoming(spool) == []
    # the second ok1 is a duplicate of the first, whichever was taken first
    assert len([n for n in rejected(spool) if not n.endswith(".error")]) == 2
    assert spool.get("ok1")["state"] == "pending"


def test_candidates_are_only_the_offered_names(spool):
    assert ingest.candidates(spool) == []
    drop(spool.path, "a.json", b"{}")
    drop(spool.path, ".b.json", b"{}")
    drop(spool.path, "c.txt", b"{}")
    assert ingest.candidates(spool) == ["a.json"]


# ---------------------------------------------------------------- recovery after a crash

def claimed_copy(spool, name, job, generated=None, age=3600):
    """What a crashed ingest leaves: incoming/NAME claimed as tmp/ingest-GENERATED-NAME."""
    generated = generated or new_id()
    path = os.path.join(spool.path, "tmp", f"{ingest.PREFIX}{generated}-{name}")
    with open(path, "w") as fh:
        fh.write(job if isinstance(job, str) else json.dumps(job))
    old = time.time() - age
    os.utime(path, (old, old))
    return path, generated


def test_recover_puts_a_claimed_copy_back_when_its_job_does_not_exist(spool):
    path, _ = claimed_copy(spool, "lost.json", {"command": "echo lost"})
    assert ingest.recover(spool) == 1
    assert not os.path.exists(path)
    assert incoming(spool) == ["lost.json"]
    accepted, _ = ingest.ingest_all(spool)
    assert accepted[0]["command"] == "echo lost"


def test_recover_puts_back_a_copy_with_its_own_id(spool):
    path, _ = claimed_copy(spool, "own-id.json", {"id": "own", "command": "echo own"})
    assert ingest.recover(spool) == 1
    assert incoming(spool) == ["own-id.json"]
    with open(os.path.join(spool.path, "incoming", "own-id.json")) as fh:
        assert json.load(fh) == {"id": "own", "command": "echo own"}


def test_recover_puts_back_an_invalid_copy_so_it_gets_rejected_properly(spool):
    path, _ = claimed_copy(spool, "junk.json", "{not json")
    assert ingest.recover(spool) == 1
    assert incoming(spool) == ["junk.json"]
    ingest.ingest_all(spool)
    assert "junk.json" in rejected(spool)


def test_recover_removes_a_copy_whose_job_exists_generated_id(spool):
    path, generated = claimed_copy(spool, "done.json", {"command": "echo done"})
    spool.enqueue("echo done", id=generated)  # the crash came after the job was stored
    assert ingest.recover(spool) == 1
    assert not os.path.exists(path)
    assert incoming(spool) == []
    assert len(job_files(spool.path, "pending")) == 1


def test_recover_removes_a_copy_whose_job_exists_own_id(spool):
    path, _ = claimed_copy(spool, "done2.json", {"id": "done2", "command": "echo done"})
    spool.enqueue("echo done", id="done2")
    assert ingest.recover(spool) == 1
    assert not os.path.exists(path)
    assert incoming(spool) == []


def test_recover_puts_back_a_copy_whose_id_belongs_to_another_job(spool):
    """A copy naming an existing id with another command was never stored: it is a duplicate,
    and goes back to be rejected as one rather than vanish."""
    path, _ = claimed_copy(spool, "clash.json", {"id": "clash", "command": "echo mine"})
    spool.enqueue("echo theirs", id="clash")
    assert ingest.recover(spool) == 1
    assert incoming(spool) == ["clash.json"]
    ingest.ingest_all(spool)
    assert "clash.json" in rejected(spool)
    assert spool.get("clash")["command"] == "echo theirs"


def test_recover_leaves_a_fresh_claim_alone(spool):
    path, _ = claimed_copy(spool, "fresh.json", {"command": "true"}, age=0)
    assert ingest.recover(spool) == 0
    assert os.path.exists(path)
    assert incoming(spool) == []


def test_recover_never_overwrites_a_file_in_incoming(spool):
    drop(spool.path, "same.json", b'{"command": "echo newer"}')
    claimed_copy(spool, "same.json", {"command": "echo older"})
    assert ingest.recover(spool) == 1
    assert len(incoming(spool)) == 2
    contents = set()
    for n in incoming(spool):
        with open(os.path.join(spool.path, "incoming", n)) as fh:
            contents.add(json.load(fh)["command"])
    assert contents == {"echo newer", "echo older"}


def test_recover_ignores_other_tmp_files(spool):
    other = os.path.join(spool.path, "tmp", "mv-x-1-abc.json")
    with open(other, "w") as fh:
        fh.write("{}")
    os.utime(other, (1, 1))
    assert ingest.recover(spool) == 0
    assert os.path.exists(other)


def test_two_ingesters_take_each_file_once(spool, spool_dir):
    from queuectl import Spool
    for i in range(40):
        drop_job(spool, f"f{i:02d}.json", {"command": f"echo {i}"})
    results = []
    barrier = threading.Barrier(2)

    def go():
        sp = Spool(spool_dir)
        barrier.wait()
        results.append(ingest.ingest_all(sp))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wait_until(lambda: len(results) == 2, timeout=5, what="both ingesters")
    accepted = [r for res in results for r in res[0]]
    assert sum(len(res[1]) for res in results) == 0
    assert len(accepted) == 40
    assert sorted(r["command"] for r in accepted) == sorted(f"echo {i}" for i in range(40))
    assert len(job_files(spool_dir, "pending")) == 40
    assert incoming(spool) == []


def test_an_invalid_file_with_a_long_name_is_rejected_too(spool):
    name = "a" * 245 + ".json"  # a legal name: 250 bytes
    drop(spool.path, name, b"{not json")
    accepted, rej = ingest.ingest_all(spool)
    assert accepted == [] and len(rej) == 1
    assert incoming(spool) == []
    assert [n for n in os.listdir(os.path.join(spool.path, "tmp")) if n.startswith(ingest.PREFIX)] == []
    kept = [n for n in rejected(spool) if not n.endswith(".error")]
    assert len(kept) == 1
    with open(os.path.join(spool.path, "rejected", kept[0]), "rb") as fh:
        assert fh.read() == b"{not json"
    errors = [n for n in rejected(spool) if n.endswith(".error")]
    assert len(errors) == 1


def test_a_valid_file_with_a_long_name_is_accepted(spool):
    name = "b" * 245 + ".json"
    drop(spool.path, name, b'{"id": "longname", "command": "true"}')
    accepted, rej = ingest.ingest_all(spool)
    assert [r["id"] for r in accepted] == ["longname"] and rej == []
    assert incoming(spool) == []


# ---------------------------------------------------------------- taken at once (rule 6b)

def test_an_idle_worker_takes_a_due_drop_straight_into_processing(spool):
    drop_job(spool, "a.json", {"id": "now", "command": "true"})
    drop_job(spool, "b.json", {"id": "next", "command": "true"})
    taken = ingest.take_first(spool, "hostx", 4242)
    held = taken.held
    assert held.state == "processing" and held.name.startswith("now_hostx_4242_a1_")
    assert held.record["state"] == "processing" and held.record["attempts"] == 1
    assert held.record["worker"] == "hostx:4242"
    assert os.listdir(os.path.join(spool.path, "processing")) == [held.name]
    assert not os.listdir(os.path.join(spool.path, "pending"))
    assert incoming(spool) == ["b.json"]  # only the first is taken; the rest wait for the next pass
    with open(os.path.join(spool.path, "ids", "now")) as fh:
        assert fh.read() == "take-hostx_4242"
    assert spool.moves.job_locked("now")  # held: no take-back while its command runs
    assert os.path.exists(taken.copy)  # the dropped file stands for the job until settled
    ingest.settle(spool, taken)
    assert not os.path.exists(taken.copy)
    held.close()


def test_a_take_is_seen_as_owned_while_its_marker_is_locked(spool):
    drop_job(spool, "a.json", {"id": "now", "command": "true"})
    taken = ingest.take_first(spool, "hostx", 4242)
    marker = os.path.join(spool.path, "ids", "now")
    assert spool.moves.marker_owner_alive(marker)
    taken.held.close()  # the worker died
    assert not spool.moves.marker_owner_alive(marker)


def test_a_drop_not_due_yet_is_filed_into_pending(spool):
    drop_job(spool, "later.json", {"id": "later", "command": "true", "run_at": "+1h"})
    assert ingest.take_first(spool, "hostx", 4242) is None
    assert [names.parse_pending(n).job_id for n in os.listdir(os.path.join(spool.path, "pending"))] == ["later"]
    assert not os.listdir(os.path.join(spool.path, "processing"))
    assert not [n for n in os.listdir(os.path.join(spool.path, "tmp")) if n.startswith(ingest.PREFIX)]


def test_a_drop_with_a_taken_id_is_rejected_as_a_duplicate_not_taken(spool):
    spool.enqueue("true", id="dup")
    drop_job(spool, "d.json", {"id": "dup", "command": "echo other"})
    assert ingest.take_first(spool, "hostx", 4242) is None
    assert rejected(spool) == ["d.json", "d.json.error"]
    assert "dup" in error_text(spool, "d.json")
    assert not os.listdir(os.path.join(spool.path, "processing"))


def test_an_invalid_drop_is_rejected_and_nothing_is_taken(spool):
    drop(spool.path, "bad.json", b"{not json")
    assert ingest.take_first(spool, "hostx", 4242) is None
    assert rejected(spool) == ["bad.json", "bad.json.error"]
