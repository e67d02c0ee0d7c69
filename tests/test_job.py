"""The job record (docs/contract.md "The job record"): input validation, ids, run_at forms. No I/O."""
import math
import time
from datetime import datetime, timezone

import pytest

from queuectl import job, timeutil
from queuectl.errors import FieldError, InvalidInput
from queuectl.job import ID_PATTERN, check_id, new_id, new_record, validate_input

NOW = 1_800_000_000.0  # a fixed reference time for relative run_at


def check(data, now=NOW):
    return validate_input(data, {"max_retries": 3}, now=now)


def field_of(data):
    with pytest.raises(FieldError) as info:
        check(data)
    assert isinstance(info.value, InvalidInput)
    assert info.value.exit_code == 2
    # the message names the field too
    assert str(info.value).startswith(info.value.field + ":")
    return info.value.field


# ---------------------------------------------------------------- defaults / happy path

def test_minimal_input_gets_defaults():
    out = check({"command": "echo hi"})
    assert out == {"id": None, "command": "echo hi", "max_retries": 3, "priority": 10,
                   "run_at": None, "timeout_seconds": None, "cwd": None, "env": None, "after": None,
                   "on_finish": None, "queue": "default", "gpus": 0}


def test_default_max_retries_comes_from_the_given_defaults():
    assert validate_input({"command": "x"}, {"max_retries": 7})["max_retries"] == 7
    assert validate_input({"command": "x", "max_retries": 1}, {"max_retries": 7})["max_retries"] == 1
    assert validate_input({"command": "x"})["max_retries"] == 3


def test_every_input_field_accepted():
    data = {"id": "job.1_a-b", "command": "make backup", "max_retries": 0, "priority": 999,
            "run_at": "2030-01-02T03:04:05Z", "timeout_seconds": 1.5, "cwd": "/tmp",
            "env": {"A": "1", "B_C": ""}}
    out = check(data)
    assert out["id"] == "job.1_a-b"
    assert out["max_retries"] == 0
    assert out["priority"] == 999
    assert out["run_at"] == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert out["timeout_seconds"] == 1.5
    assert out["cwd"] == "/tmp"
    assert out["env"] == {"A": "1", "B_C": ""}


def test_null_optional_fields_mean_default():
    out = check({"command": "x", "id": None, "max_retries": None, "priority": None, "run_at": None,
                 "timeout_seconds": None, "cwd": None, "env": None})
    assert out["id"] is None and out["priority"] == 10 and out["max_retries"] == 3


def test_boundaries_accepted():
    assert check({"command": "x", "priority": 0})["priority"] == 0
    assert check({"command": "x", "priority": 999})["priority"] == 999
    assert check({"command": "x", "max_retries": 0})["max_retries"] == 0
    assert check({"command": "x", "timeout_seconds": 0})["timeout_seconds"] == 0
    assert check({"command": "x", "id": "a" * 128})["id"] == "a" * 128
    assert check({"command": "x" * job.MAX_COMMAND_BYTES})["command"]


# ---------------------------------------------------------------- bad fields name the field

@pytest.mark.parametrize("data, field", [
    ({}, "command"),
    ({"command": None}, "command"),
    ({"command": ""}, "command"),
    ({"command": "   \n\t"}, "command"),
    ({"command": 5}, "command"),
    ({"command": ["echo", "hi"]}, "command"),
    ({"command": "echo \x00"}, "command"),
    ({"command": "echo \ud800"}, "command"),  # not encodable as UTF-8
    ({"command": "x" * (job.MAX_COMMAND_BYTES + 1)}, "command"),
    ({"command": "x", "id": 5}, "id"),
    ({"command": "x", "id": ""}, "id"),
    ({"command": "x", "id": ["a"]}, "id"),
    ({"command": "x", "max_retries": -1}, "max_retries"),
    ({"command": "x", "max_retries": "3"}, "max_retries"),
    ({"command": "x", "max_retries": 1.5}, "max_retries"),
    ({"command": "x", "max_retries": 2.0}, "max_retries"),
    ({"command": "x", "max_retries": True}, "max_retries"),
    ({"command": "x", "max_retries": job.MAX_RETRIES_LIMIT + 1}, "max_retries"),
    ({"command": "x", "priority": -1}, "priority"),
    ({"command": "x", "priority": 1000}, "priority"),
    ({"command": "x", "priority": "1"}, "priority"),
    ({"command": "x", "priority": 1.0}, "priority"),
    ({"command": "x", "priority": False}, "priority"),
    ({"command": "x", "run_at": "tomorrow"}, "run_at"),
    ({"command": "x", "run_at": True}, "run_at"),
    ({"command": "x", "run_at": []}, "run_at"),
    ({"command": "x", "run_at": {"at": 1}}, "run_at"),
    ({"command": "x", "run_at": -1}, "run_at"),
    ({"command": "x", "run_at": "10000-01-01T00:00:00Z"}, "run_at"),
    ({"command": "x", "run_at": 1e20}, "run_at"),
    ({"command": "x", "run_at": "+5x"}, "run_at"),
    ({"command": "x", "run_at": "-5m"}, "run_at"),
    ({"command": "x", "run_at": ""}, "run_at"),
    ({"command": "x", "timeout_seconds": -1}, "timeout_seconds"),
    ({"command": "x", "timeout_seconds": "5"}, "timeout_seconds"),
    ({"command": "x", "timeout_seconds": True}, "timeout_seconds"),
    ({"command": "x", "timeout_seconds": math.nan}, "timeout_seconds"),
    ({"command": "x", "timeout_seconds": math.inf}, "timeout_seconds"),
    ({"command": "x", "cwd": "relative/dir"}, "cwd"),
    ({"command": "x", "cwd": ""}, "cwd"),
    ({"command": "x", "cwd": 5}, "cwd"),
    ({"command": "x", "cwd": "/tmp/\x00x"}, "cwd"),
    ({"command": "x", "env": ["A=1"]}, "env"),
    ({"command": "x", "env": "A=1"}, "env"),
    ({"command": "x", "env": {"": "x"}}, "env"),
    ({"command": "x", "env": {"A=B": "x"}}, "env"),
    ({"command": "x", "env": {"A\x00": "x"}}, "env"),
])
def test_bad_field_is_named(data, field):
    assert field_of(data) == field


@pytest.mark.parametrize("value", [1, None, ["x"], {"a": "b"}, True, "x\x00y", "\ud800"])
def test_env_values_must_be_strings_and_the_error_names_the_variable(value):
    assert field_of({"command": "x", "env": {"GOOD": "ok", "MYVAR": value}}) == "env.MYVAR"


def test_too_many_env_variables():
    assert field_of({"command": "x", "env": {f"V{i}": "" for i in range(1001)}}) == "env"


@pytest.mark.parametrize("key", ["state", "attempts", "created_at", "worker", "exit_code", "foo",
                                 "Command", "last_error"])
def test_unknown_field_rejected_and_named(key):
    assert field_of({"command": "x", key: 1}) == key


def test_non_string_key_rejected():
    with pytest.raises(FieldError):
        check({"command": "x", 5: 1})


@pytest.mark.parametrize("data", [[], [{"command": "x"}], "echo", 5, None])
def test_input_must_be_an_object(data):
    with pytest.raises(FieldError) as info:
        validate_input(data)
    assert info.value.field == "job"


# ---------------------------------------------------------------- ids

@pytest.mark.parametrize("bad", [
    "../x", "..", ".", "/etc", "/etc/passwd", "a/b", "a/../../b", ".hidden", "-x", "_x",
    "a" * 129, "a\x00b", "\x00", "a b", "a\nb", "a\n", "ü", "a:b", "a\\b", "*", "~root", "a$b",
])
def test_bad_ids_refused(bad):
    with pytest.raises(FieldError) as info:
        check_id(bad)
    assert info.value.field == "id"
    assert field_of({"command": "x", "id": bad}) == "id"
    assert not ID_PATTERN.fullmatch(bad)


@pytest.mark.parametrize("good", ["a", "0", "A-b_c.d", "job.json", "x" * 128, "9..", "a--_..z"])
def test_good_ids_accepted(good):
    assert check_id(good) == good
    assert check({"command": "x", "id": good})["id"] == good


def test_check_id_names_the_given_field():
    with pytest.raises(FieldError) as info:
        check_id("../x", "ID")
    assert info.value.field == "ID"


def test_generated_ids_unique_valid_and_sorted_by_creation():
    ids = [new_id() for _ in range(10000)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids
    assert all(ID_PATTERN.fullmatch(i) for i in ids)


def test_generated_id_carries_the_creation_time():
    before = time.time()
    ident = new_id()
    after = time.time()
    stamp = datetime.strptime(ident[:22], "%Y%m%d-%H%M%S-%f").replace(tzinfo=timezone.utc).timestamp()
    assert before - 0.001 <= stamp <= after + 0.001


def test_new_record_generates_an_id_when_absent():
    a = new_record(check({"command": "x"}), NOW)
    b = new_record(check({"command": "x"}), NOW)
    assert a["id"] != b["id"]
    assert ID_PATTERN.fullmatch(a["id"])
    assert new_record(check({"command": "x", "id": "mine"}), NOW)["id"] == "mine"


def test_new_record_has_every_field_of_the_contract():
    """Every field of docs/contract.md "The job record"."""
    rec = new_record(check({"command": "x", "run_at": "+30s"}), NOW)
    assert set(rec) == set(job.RECORD_FIELDS)
    assert rec["state"] == "pending"
    assert rec["attempts"] == 0
    assert rec["created_at"] == rec["updated_at"] == timeutil.iso(NOW)
    assert rec["created_at"].endswith("Z") and len(rec["created_at"]) == len("2026-11-22T10:30:00.123Z")
    assert rec["run_at"] == timeutil.iso(NOW + 30)
    for field in ("started_at", "finished_at", "exit_code", "last_error", "worker"):
        assert rec[field] is None
    job.check_record(rec)


# ---------------------------------------------------------------- run_at forms

T = datetime(2030, 6, 15, 12, 30, 45, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("value, expected", [
    ("2030-06-15T12:30:45Z", T),
    ("2030-06-15T12:30:45z", T),
    ("2030-06-15T12:30:45.250Z", T + 0.25),
    ("2030-06-15T12:30:45+00:00", T),
    ("2030-06-15T14:30:45+02:00", T),
    ("2030-06-15T07:30:45-05:00", T),
    ("2030-06-15T12:30:45", T),            # no zone = UTC
    ("2030-06-15 12:30:45", T),
    (" 2030-06-15T12:30:45Z ", T),
    (int(T), T),                            # Unix seconds
    (T + 0.5, T + 0.5),
    (0, 0.0),
    ("+30s", NOW + 30),
    ("+5m", NOW + 300),
    ("+2h", NOW + 7200),
    ("+1d", NOW + 86400),
    ("+1.5m", NOW + 90),
    ("+0s", NOW),
])
def test_run_at_forms(value, expected):
    assert check({"command": "x", "run_at": value})["run_at"] == pytest.approx(expected, abs=1e-6)


def test_relative_run_at_uses_the_current_time_by_default():
    before = time.time()
    got = validate_input({"command": "x", "run_at": "+2h"})["run_at"]
    assert before + 7200 <= got <= time.time() + 7200


def test_run_at_is_stored_as_iso_utc():
    rec = new_record(check({"command": "x", "run_at": "2030-06-15T14:30:45.250+02:00"}), NOW)
    assert rec["run_at"] == "2030-06-15T12:30:45.250Z"
    assert job.due_time(rec) == pytest.approx(T + 0.25)


def test_due_time_without_run_at_is_creation_time():
    rec = new_record(check({"command": "x"}), NOW)
    assert job.due_time(rec) == pytest.approx(NOW, abs=0.001)


# ---------------------------------------------------------------- check_record

def test_check_record_refuses_damaged_records():
    good = new_record(check({"command": "x"}), NOW)
    job.check_record(dict(good))
    for field, value in [("id", "../x"), ("command", 5), ("attempts", -1), ("max_retries", "3"),
                         ("priority", None), ("created_at", "yesterday"), ("run_at", "soon")]:
        with pytest.raises(FieldError) as info:
            job.check_record(dict(good, **{field: value}))
        assert info.value.field == field
    with pytest.raises(FieldError):
        job.check_record(["not", "a", "dict"])
