"""`queuectl doctor` in process: the filesystem checks on a local disk, and the refusal of a
host name that another machine's live workers use."""
import json
import os

from click.testing import CliRunner

from queuectl import doctor, locks, registry
from queuectl.cli import cli
from queuectl.names import hostname


def fake_registration(spool, host, pid, machine):
    """A registration as another process writes it; returns the fd holding its lock."""
    path = os.path.join(spool.layout.workers, registry.worker_name(host, pid) + ".json")
    with open(path, "w") as fh:
        json.dump({"host": host, "pid": pid, "started_at": "2026-11-29T00:00:00Z", "machine": machine}, fh)
    fd = os.open(path, os.O_RDWR)
    locks.hold(fd)
    return fd


def checks(spool):
    return {c.name: c for c in doctor.run(spool.layout)}


def test_a_local_disk_passes_every_check(spool):
    found = checks(spool)
    assert set(found) == {"exclusive create", "rename", "locks", "clock", "host name"}
    assert all(c.ok for c in found.values()), [c.detail for c in found.values() if not c.ok]
    assert not [n for n in os.listdir(spool.layout.tmp) + os.listdir(spool.layout.workers) if n.startswith(".doctor")]


def test_live_workers_of_another_machine_under_this_host_name_fail_the_check(spool):
    fd = fake_registration(spool, hostname(), 4242, "0" * 32 + "/4026531836")
    try:
        check = checks(spool)["host name"]
        assert not check.ok
        assert hostname() in check.detail and "another machine" in check.detail
        assert "host name" in check.fix
        result = CliRunner().invoke(cli, ["--spool", spool.path, "doctor"])
        assert result.exit_code == 1
        assert "FAIL host name:" in result.output
    finally:
        os.close(fd)


def test_a_dead_registration_or_this_machines_own_does_not_count(spool):
    fd = fake_registration(spool, hostname(), 4242, "0" * 32 + "/4026531836")
    os.close(fd)  # its worker died: the lock is gone
    assert checks(spool)["host name"].ok
    fd = fake_registration(spool, hostname(), 4343, registry.machine_identity())
    try:
        assert checks(spool)["host name"].ok
    finally:
        os.close(fd)


def test_another_host_name_from_another_machine_is_fine(spool):
    fd = fake_registration(spool, "elsewhere", 4242, "0" * 32 + "/4026531836")
    try:
        assert checks(spool)["host name"].ok
    finally:
        os.close(fd)


def test_a_registration_says_which_machine_made_it(spool):
    fd = registry.register(spool.layout, hostname(), os.getpid())
    try:
        with open(os.path.join(spool.layout.workers, registry.worker_name(hostname(), os.getpid()) + ".json")) as fh:
            assert json.load(fh)["machine"] == registry.machine_identity() != ""
    finally:
        registry.unregister(spool.layout, hostname(), os.getpid(), fd)
