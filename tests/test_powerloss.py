"""The power-loss explorer (testbed/crashfs.py, testbed/powerloss.py): its reading of a trace,
its replay and its two persistence models, in process; then the explorer itself on real
queuectl code, which must find no violation, and must find the bug planted for it."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "testbed"))
import crashfs  # noqa: E402


def hx(text):
    return "".join(f"\\x{b:02x}" for b in text.encode())


def trace(root, *calls):
    """Lines as `strace -f -y -xx` writes them, from (pid, call, args, result[, result path])."""
    lines = []
    for pid, call, args, ret, *path in calls:
        shown = []
        for a in args:
            if isinstance(a, tuple):  # (fd, path): a descriptor and the file it names
                shown.append(f"{a[0]}<{hx(a[1])}>")
            elif isinstance(a, str) and a.startswith("/"):
                shown.append(f'"{hx(a)}"')
            elif isinstance(a, bytes):
                shown.append('"' + "".join(f"\\x{b:02x}" for b in a) + '"')
            else:
                shown.append(str(a))
        tail = f"<{hx(path[0])}>" if path else ""
        lines.append(f"{pid} {call}({', '.join(shown)}) = {ret}{tail}\n")
    return lines


def record(root, *calls, existing=(("pending", True), ("tmp", True))):
    rec = crashfs.Recorder(root, list(existing))
    rec.feed(trace(root, *calls))
    return rec


R = "/s"
INITIAL = [("pending", None), ("tmp", None)]


def staged_then_moved(sync_file, sync_dir):
    """tmp/a written, maybe fsynced, renamed into pending/, maybe pending/ fsynced."""
    calls = [(1, "openat", ["AT_FDCWD", R + "/tmp/a", "O_WRONLY|O_CREAT|O_EXCL", "0600"], 3, R + "/tmp/a"),
             (1, "write", [(3, R + "/tmp/a"), b"job", 3], 3)]
    if sync_file:
        calls.append((1, "fsync", [(3, R + "/tmp/a")], 0))
    calls += [(1, "close", [(3, R + "/tmp/a")], 0),
              (1, "rename", [R + "/tmp/a", R + "/pending/a"], 0)]
    if sync_dir:
        calls += [(1, "openat", ["AT_FDCWD", R + "/pending", "O_RDONLY|O_DIRECTORY"], 4, R + "/pending"),
                  (1, "fsync", [(4, R + "/pending")], 0)]
    calls.append((1, "access", [crashfs.MARK_DIR + "ack.a", "F_OK"], -1))
    return record(R, *calls).ops


def test_a_trace_becomes_operations_on_inodes_with_the_bytes_written():
    ops = staged_then_moved(sync_file=True, sync_dir=True)
    assert [op.kind for op in ops] == ["create", "write", "fsync", "rename", "fsync", "mark"]
    assert ops[1].data == b"job" and ops[1].ino == ops[0].ino == ops[3].ino
    assert ops[-1].path == "ack.a"
    assert crashfs.replay(INITIAL, ops) == {"pending": None, "tmp": None, "pending/a": b"job"}


def test_a_write_through_a_descriptor_whose_name_was_replaced_reaches_its_inode():
    """The spare-inode pool writes through a descriptor whose name another file took since."""
    ops = record(R,
                 (1, "openat", ["AT_FDCWD", R + "/pending/x", "O_RDWR|O_CREAT|O_EXCL", "0600"], 3, R + "/pending/x"),
                 (1, "link", [R + "/pending/x", R + "/tmp/spare"], 0),
                 (1, "openat", ["AT_FDCWD", R + "/tmp/y", "O_WRONLY|O_CREAT|O_EXCL", "0600"], 4, R + "/tmp/y"),
                 (1, "rename", [R + "/tmp/y", R + "/pending/x"], 0),
                 (1, "pwrite64", [(3, R + "/pending/x (deleted)"), b"new", 3, 0], 3)).ops
    tree = crashfs.replay(INITIAL, ops)
    assert tree["tmp/spare"] == b"new" and tree["pending/x"] == b""


def test_ext4_ordered_loses_only_unsynced_data_and_keeps_the_order_of_names():
    unsynced = staged_then_moved(sync_file=False, sync_dir=True)
    assert [op.kind for op in unsynced] == ["create", "write", "rename", "fsync", "mark"]
    found = {(j, v): t for j, _k, v, t in crashfs.states(unsynced, INITIAL, "ext4-ordered")}
    # the folder's fsync makes everything before it durable, data included
    assert found[(5, "all")]["pending/a"] == b"job" and (5, "unsynced-data-lost") not in found
    # cut after the rename, before any sync: the name moved, its data may be missing or short
    assert found[(3, "unsynced-data-lost")]["pending/a"] == b""
    assert found[(3, "unsynced-data-cut")]["pending/a"] == b"j"
    assert all("tmp/a" not in t or "pending/a" not in t for t in found.values())  # never both names


def test_ext4_ordered_judges_a_prefix_by_what_was_told_before_the_next_fsync():
    """Without the folder's fsync the rename may not persist, though `ack.a` was told."""
    ops = staged_then_moved(sync_file=True, sync_dir=False)
    judged = {j: k for j, k, v, t in crashfs.states(ops, INITIAL, "ext4-ordered") if v == "all"}
    assert judged[len(ops) - 2] == len(ops)  # cut before the rename persisted, judged with the ack
    safe = staged_then_moved(sync_file=True, sync_dir=True)
    judged = {j: k for j, k, v, t in crashfs.states(safe, INITIAL, "ext4-ordered") if v == "all"}
    assert judged[3] == 4  # the folder's fsync (op 4) comes before the ack: the ack never counts


def test_posix_weak_needs_the_folders_fsync_for_the_name_and_the_files_for_the_data():
    rng = crashfs.rng_for(1)
    safe = staged_then_moved(sync_file=True, sync_dir=True)
    after = [t for j, _k, v, t in crashfs.states(safe, INITIAL, "posix-weak", rng=rng) if j == len(safe)]
    assert after and all(t.get("pending/a") == b"job" for t in after)
    unsafe = staged_then_moved(sync_file=True, sync_dir=False)
    after = [t for j, _k, v, t in crashfs.states(unsafe, INITIAL, "posix-weak", rng=rng) if j == len(unsafe)]
    assert any("pending/a" not in t for t in after)  # the rename may not persist: the job is gone


def test_a_setting_that_had_returned_must_hold_after_recovery():
    import powerloss
    told = [crashfs.Op("mark", path=p) for p in ("try.paused=yes", "set.paused=yes", "try.paused=no")]
    for i, op in enumerate(told):
        op.index = i
    assert powerloss._settings_lost(told[:1], {"paused": "no"}) == []  # only tried: either is fine
    assert powerloss._settings_lost(told[:2], {"paused": "yes"}) == []
    assert powerloss._settings_lost(told[:2], {"paused": "no"}) == \
        ["setting paused is no, though yes had been set"]
    assert powerloss._settings_lost(told, {"paused": "no"}) == []  # resume tried: it may have persisted


@pytest.mark.process
@pytest.mark.skipif(not shutil.which("strace"), reason="the explorer needs strace (Debian strace)")
def test_with_durable_moves_a_weak_filesystem_loses_nothing(tmp_path):
    """posix-weak, where a worker's unsynced moves lose jobs by default: with config
    durable-moves on, the moves of complete, fail, retry, bury and dlq retry are clean."""
    cmd = [sys.executable, os.path.join(ROOT, "testbed", "powerloss.py"), "--json", "--model", "posix-weak",
           "--workload", "complete, fail and retry, bury, dlq retry"]
    durable = subprocess.run(cmd + ["--config", "durable-moves=on"], capture_output=True, text=True, timeout=900,
                             cwd=tmp_path)
    doc = json.loads(durable.stdout)
    problems = doc["models"]["posix-weak"]["violations"]
    assert durable.returncode == 0 and not problems, json.dumps(problems[:5], indent=1)
    assert doc["config"] == {"durable-moves": "on"} and doc["models"]["posix-weak"]["states"] > 500


@pytest.mark.process
@pytest.mark.skipif(not shutil.which("strace"), reason="the explorer needs strace (Debian strace)")
def test_the_explorer_finds_no_violation_under_ext4_and_finds_the_planted_one(tmp_path):
    """The short mode: three workloads, ext4-ordered (the full run of both models is reported in
    docs/guarantees.md); then enqueue without its fsyncs, which must lose jobs."""
    cmd = [sys.executable, os.path.join(ROOT, "testbed", "powerloss.py"), "--json", "--model", "ext4-ordered"]
    clean = subprocess.run(cmd + ["--quick"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    doc = json.loads(clean.stdout)
    problems = doc["models"]["ext4-ordered"]["violations"]
    assert clean.returncode == 0 and not problems, json.dumps(problems[:5], indent=1)
    assert [w["seam"] for w in doc["workloads"]] == ["complete"] * 3
    assert doc["models"]["ext4-ordered"]["states"] > 500
    planted = subprocess.run(cmd + ["--workload", "enqueue one and a batch", "--plant", "no-enqueue-fsync"],
                             capture_output=True, text=True, timeout=900, cwd=tmp_path)
    lost = [v for v in json.loads(planted.stdout)["models"]["ext4-ordered"]["violations"] if "lost" in v["what"]]
    assert planted.returncode == 1 and lost, planted.stdout[-2000:]


def test_ext4_ordered_keeps_the_data_a_rename_over_an_existing_file_carried():
    """A move's new record replaces the old one by rename: ext4 (auto_da_alloc) writes the new
    file's data before that rename commits, so it is never lost alone."""
    ops = record(R,
                 (1, "openat", ["AT_FDCWD", R + "/pending/j", "O_WRONLY|O_CREAT|O_EXCL", "0600"], 3, R + "/pending/j"),
                 (1, "write", [(3, R + "/pending/j"), b"old", 3], 3),
                 (1, "fsync", [(3, R + "/pending/j")], 0),
                 (1, "openat", ["AT_FDCWD", R + "/tmp/n", "O_WRONLY|O_CREAT|O_EXCL", "0600"], 4, R + "/tmp/n"),
                 (1, "write", [(4, R + "/tmp/n"), b"new", 3], 3),
                 (1, "rename", [R + "/tmp/n", R + "/pending/j"], 0),
                 (1, "openat", ["AT_FDCWD", R + "/tmp/m", "O_WRONLY|O_CREAT|O_EXCL", "0600"], 5, R + "/tmp/m"),
                 (1, "write", [(5, R + "/tmp/m"), b"more", 4], 4),
                 (1, "rename", [R + "/tmp/m", R + "/pending/k"], 0)).ops
    assert [op.replaces for op in ops if op.kind == "rename"] == [True, False]
    variants = {v: t for j, _k, v, t in crashfs.states(ops, INITIAL, "ext4-ordered") if j == len(ops)}
    assert variants["unsynced-data-lost"]["pending/j"] == b"new"   # carried by the rename over it
    assert variants["unsynced-data-lost"]["pending/k"] == b""      # a new name carries nothing
