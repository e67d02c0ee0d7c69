"""Spool settings (docs/contract.md "Commands", `config`): Spool.set_config / unset_config / config()."""
import json
import os

import pytest

from queuectl import Spool
from queuectl.errors import FieldError, InvalidInput

DEFAULTS = {"max-retries": 3, "backoff-base": 2, "backoff-max": 3600, "backoff-jitter": 0,
            "job-timeout": 0, "worker-count": 1, "log-max-bytes": 10 * 1024 * 1024,
            "rescan-interval": 2, "contact-timeout": 10, "on-finish": None, "durable-moves": False}


def config_bytes(spool):
    path = os.path.join(spool.path, "config.json")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as fh:
        return fh.read()


def test_defaults(spool):
    assert spool.config() == DEFAULTS
    assert config_bytes(spool) is None


@pytest.mark.parametrize("key, text, value", [
    ("max-retries", "0", 0),
    ("max-retries", "7", 7),
    ("backoff-base", "1", 1),
    ("backoff-base", "1.5", 1.5),
    ("backoff-base", "3", 3),
    ("backoff-max", "0", 0),
    ("backoff-max", "90.5", 90.5),
    ("backoff-jitter", "0", 0),
    ("backoff-jitter", "0.25", 0.25),
    ("backoff-jitter", "1", 1),
    ("job-timeout", "0", 0),
    ("job-timeout", "2.5", 2.5),
    ("job-timeout", " 30 ", 30),
    ("worker-count", "1", 1),
    ("worker-count", "4", 4),
    ("log-max-bytes", "0", 0),
    ("log-max-bytes", "100000", 100000),
    ("on-finish", "notify-send done", "notify-send done"),
    ("durable-moves", "on", True),
    ("durable-moves", " OFF ", False),
    ("durable-moves", "true", True),
    ("durable-moves", True, True),
])
def test_every_key_can_be_set_and_read_back(spool, key, text, value):
    assert spool.set_config(key, text) == value
    got = spool.config()
    assert got[key] == value and type(got[key]) is type(value)
    assert got == dict(DEFAULTS, **{key: value})
    # stored in a JSON file in the spool; a fresh Spool object sees it
    with open(os.path.join(spool.path, "config.json")) as fh:
        assert json.load(fh)[key] == value
    assert Spool(spool.path).config()[key] == value


def test_integer_keys_are_ints_and_times_may_have_decimals(spool):
    spool.set_config("max-retries", 5)
    spool.set_config("worker-count", 2.0)  # a JSON number that is integral
    spool.set_config("job-timeout", 0.5)
    cfg = spool.config()
    assert cfg["max-retries"] == 5 and isinstance(cfg["max-retries"], int)
    assert cfg["worker-count"] == 2 and isinstance(cfg["worker-count"], int)
    assert cfg["job-timeout"] == 0.5


@pytest.mark.parametrize("spelling", ["max_retries", "MAX-RETRIES", "Max_Retries", " max-retries "])
def test_underscore_and_case_spellings(spool, spelling):
    assert spool.set_config(spelling, "8") == 8
    assert spool.config()["max-retries"] == 8
    assert "max_retries" not in spool.config()
    assert spool.unset_config(spelling) == 3
    assert spool.config()["max-retries"] == 3


@pytest.mark.parametrize("key", ["backoff_base", "backoff_max", "backoff_jitter", "job_timeout",
                                 "worker_count", "log_max_bytes"])
def test_underscore_spelling_of_every_key(spool, key):
    spool.set_config(key, "1")
    assert spool.config()[key.replace("_", "-")] == 1


def test_unset_returns_to_the_default(spool):
    for key in DEFAULTS:
        spool.set_config(key, "1")
    assert all(v in (1, "1") for v in spool.config().values())
    for key, default in DEFAULTS.items():
        assert spool.unset_config(key) == default
        assert spool.config()[key] == default
    assert spool.config() == DEFAULTS
    with open(os.path.join(spool.path, "config.json")) as fh:
        assert json.load(fh) == {}


def test_unset_of_a_key_never_set_is_fine(spool):
    assert spool.unset_config("job-timeout") == 0
    assert spool.config() == DEFAULTS


def test_unset_also_removes_a_hand_written_underscore_key(spool):
    with open(os.path.join(spool.path, "config.json"), "w") as fh:
        json.dump({"max_retries": 9}, fh)
    assert spool.config()["max-retries"] == 9
    spool.unset_config("max-retries")
    assert spool.config()["max-retries"] == 3


@pytest.mark.parametrize("key, value", [
    ("backoff-base", "0.5"),
    ("backoff-base", "0"),
    ("backoff-base", 0.99),
    ("worker-count", "0"),
    ("worker-count", 0),
    ("max-retries", "-1"),
    ("backoff-max", "-1"),
    ("backoff-max", -0.5),
    ("backoff-jitter", "-0.1"),
    ("backoff-jitter", "1.5"),
    ("backoff-jitter", 2),
    ("job-timeout", "-1"),
    ("log-max-bytes", "-1"),
    ("max-retries", "abc"),
    ("backoff-base", "abc"),
    ("job-timeout", ""),
    ("job-timeout", "5s"),
    ("worker-count", "two"),
    ("max-retries", "1.5"),
    ("max-retries", 1.5),
    ("worker-count", "2.5"),
    ("log-max-bytes", "1000.5"),
    ("log-max-bytes", "1e3"),
    ("backoff-max", "nan"),
    ("backoff-max", "inf"),
    ("job-timeout", float("nan")),
    ("job-timeout", float("inf")),
    ("max-retries", True),
    ("max-retries", None),
    ("max-retries", [3]),
    ("durable-moves", "maybe"),
    ("durable-moves", 2),
    ("durable-moves", None),
    ("durable-moves", ""),
])
def test_refused_values_change_nothing(spool, key, value):
    spool.set_config("max-retries", "5")  # config.json exists
    spool.set_config("backoff-base", "3")
    before = config_bytes(spool)
    effective = spool.config()
    with pytest.raises(InvalidInput) as info:
        spool.set_config(key, value)
    exc = info.value
    assert isinstance(exc, FieldError) and exc.field == key
    assert exc.exit_code == 2
    assert key in str(exc)
    assert config_bytes(spool) == before
    assert spool.config() == effective


def test_refused_value_on_a_fresh_spool_creates_no_config(spool):
    with pytest.raises(InvalidInput):
        spool.set_config("worker-count", "0")
    assert config_bytes(spool) is None


def test_refused_value_message_names_the_valid_range(spool):
    with pytest.raises(InvalidInput) as info:
        spool.set_config("backoff-jitter", "1.5")
    assert "0" in str(info.value) and "1" in str(info.value)


@pytest.mark.parametrize("key", ["nope", "max", "retries", "", "max--retries", "backoff"])
def test_unknown_key_is_refused_naming_the_valid_keys(spool, key):
    before = config_bytes(spool)
    for call in (lambda: spool.set_config(key, "1"), lambda: spool.unset_config(key)):
        with pytest.raises(InvalidInput) as info:
            call()
        for valid in DEFAULTS:
            assert valid in str(info.value)
    assert config_bytes(spool) == before


def test_a_damaged_config_file_falls_back_to_defaults(spool):
    path = os.path.join(spool.path, "config.json")
    with open(path, "w") as fh:
        fh.write("{not json")
    assert spool.config() == DEFAULTS
    with open(path, "w") as fh:
        json.dump({"max-retries": -5, "worker-count": 3, "bogus": 1}, fh)
    assert spool.config() == dict(DEFAULTS, **{"worker-count": 3})
    spool.set_config("job-timeout", "5")  # a later set still works
    assert spool.config()["job-timeout"] == 5


def test_config_set_leaves_no_temporary_files(spool):
    spool.set_config("max-retries", "4")
    spool.set_config("max-retries", "5")
    assert [n for n in os.listdir(os.path.join(spool.path, "tmp"))] == []
    assert spool.config()["max-retries"] == 5


@pytest.mark.parametrize("value, stored", [("", None), ("  ", None), ("echo $QUEUECTL_JOB_ID", "echo $QUEUECTL_JOB_ID")])
def test_on_finish_is_text_and_blank_means_none(spool, value, stored):
    assert spool.set_config("on_finish", value) == stored
    assert spool.config()["on-finish"] == stored


@pytest.mark.parametrize("value", ["a\x00b", "x" * (64 * 1024 + 1), 5])
def test_a_bad_on_finish_is_refused_and_changes_nothing(spool, value):
    with pytest.raises(FieldError, match="on-finish") as info:
        spool.set_config("on-finish", value)
    assert info.value.exit_code == 2 and config_bytes(spool) is None


def test_switch_is_shown_as_on_and_off_by_the_cli(spool):
    from click.testing import CliRunner
    from queuectl.cli import cli
    runner = CliRunner()
    assert runner.invoke(cli, ["--spool", spool.path, "config", "get", "durable-moves"]).output == "off\n"
    assert runner.invoke(cli, ["--spool", spool.path, "config", "set", "durable-moves", "on"]).output == "durable-moves = on\n"
    assert runner.invoke(cli, ["--spool", spool.path, "config", "get", "durable_moves"]).output == "on\n"
    listed = runner.invoke(cli, ["--spool", spool.path, "config", "list"]).output
    assert any(line.split()[:2] == ["durable-moves", "on"] for line in listed.splitlines())
    refused = runner.invoke(cli, ["--spool", spool.path, "config", "set", "durable-moves", "sometimes"])
    assert refused.exception.exit_code == 2 and "must be on or off" in str(refused.exception)
    assert spool.config()["durable-moves"] is True


def test_a_busy_worker_reads_a_change_within_a_second_and_after_any_wait(spool, monkeypatch):
    """A worker looks at config.json at most once a second while it claims job after job (a
    stat saved per job), and always before the first job after an idle wait."""
    from queuectl import worker as workermod
    clock = [1000.0]
    monkeypatch.setattr(workermod.time, "monotonic", lambda: clock[0])
    w = workermod.Worker(spool)
    w.waker = type("Waker", (), {"wait": lambda self, timeout: None, "mechanism": "inotify"})()
    assert w.config()["max-retries"] == 3
    spool.set_config("max-retries", "5")
    clock[0] += workermod.CONFIG_LOOK / 2
    assert w.config()["max-retries"] == 3, "busy: the settings read half a second ago still hold"
    clock[0] += workermod.CONFIG_LOOK / 2
    assert w.config()["max-retries"] == 5, "a second on: looked again"
    spool.set_config("max-retries", "6")
    w._idle(0.0)
    assert w.config()["max-retries"] == 6, "after a wait: looked again at once"
    w.waker.mechanism = "poll"  # no event would tell of a change on this host: a look per job
    spool.set_config("max-retries", "7")
    assert w.config()["max-retries"] == 7
