"""Property-based (hypothesis) fuzzing of everything that takes user input:

- the in-process API: Spool.enqueue_many(items) and queuectl.job.validate_input(data) with
  arbitrary JSON-like values: either records that pass check_record, or InvalidInput
  (FieldError) and an unchanged spool; never another exception; nothing outside the spool;
- dropped files in incoming/ (random bytes, random JSON, odd names, symlinks, FIFOs,
  folders, over-size files) run through ingest.ingest_all: each candidate ends as exactly one
  pending job or in rejected/ beside NAME.error, nothing left in incoming/ or tmp/;
- the CLI (`enqueue`, `config set`) in a subprocess: exit 0 or 2, no traceback, exit 2
  changes nothing (these tests, and the regressions that run the CLI, are marked `process`).

The bugs the fuzzing found are pinned by the regression tests at the end ("found by the
fuzzing") and fixed; known_bug() is the hook to tolerate a newly found one until it is fixed.
The summary line printed at the end of the module says how many examples ran.
"""
import collections
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st

from helpers import outside_snapshot, report_line, run_cli, tree_snapshot
from queuectl import Spool, config as configmod, fsutil, ingest
from queuectl.errors import FieldError, InvalidInput
from queuectl.job import ID_PATTERN, INPUT_FIELDS, check_record, new_record, validate_input
from queuectl.moves import MAX_DROP_BYTES

COUNTS = collections.Counter()   # examples run, per property (+ "known-bug" tallies)

FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                   HealthCheck.filter_too_much, HealthCheck.large_base_example])


@pytest.fixture(scope="module", autouse=True)
def _report_counts(pytestconfig):
    yield
    report_line(pytestconfig, "\n[fuzz] examples run: " + ", ".join(f"{k}={v}" for k, v in sorted(COUNTS.items())))


def _run_counted(prop, key, minimum):
    """Run a @given property and check it really ran at least `minimum` examples."""
    before = COUNTS[key]
    prop()
    ran = COUNTS[key] - before
    assert ran >= minimum, f"only {ran} examples of {key} ran"


# ---------------------------------------------------------------- strategies

FLOAT_MAX = sys.float_info.max
# (base, exponent): the strategy maps them to ints (hypothesis cannot repr a >4300-digit literal)
HUGE_INTS = st.sampled_from([(2, 31), (2, 63), (-2, 63), (10, 20), (10, 308), (10, 309), (-10, 309), (10, 400),
                             (10, 4299), (10, 4301)]).map(lambda be: be[0] ** be[1])
LIMIT_4300 = 10**4300

any_char = st.characters(exclude_categories=())          # surrogates included
plain_char = st.characters(exclude_categories=("Cs",))
texts = st.one_of(
    st.text(any_char, max_size=30),
    st.text(st.sampled_from("ab \t\n\x00/.-_=é€😀\ud800\udcff"), max_size=20),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "😀", " ", "\x00"]),
              st.sampled_from([127, 128, 129, 4096, 4097, 70000, 262144, 262145])),
)
ints = st.one_of(st.integers(), st.integers(-3, 1100), HUGE_INTS)
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)


def _deep(n, leaf=1):
    value = leaf
    for i in range(n):
        value = [value] if i % 2 else {"k": value}
    return value


json_like = st.one_of(
    st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                 st.dictionaries(texts, kids, max_size=4)),
                 max_leaves=12),
    st.integers(50, 400).map(_deep),
)

valid_ids = st.from_regex(ID_PATTERN, fullmatch=True)
bad_ids = st.sampled_from(["../x", "a/b", "/etc/passwd", ".", "..", "", " a", "a" * 129, "-a",
                           "_a", "a\x00", "a\n", "é", "a b", "a/../../b"])
ids = st.one_of(valid_ids, valid_ids, bad_ids, st.just("taken"), json_like)


def _iso(dt, z):
    text = dt.isoformat()
    return text.replace("+00:00", "Z") if z else text


tzs = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-1439, 1439))
iso_times = st.builds(_iso, st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31),
                                         timezones=st.none() | tzs), st.booleans())
run_ats = st.one_of(
    st.none(), iso_times, floats, ints, st.integers(0, 253402300800),
    st.builds(lambda n, u: f"+{n}{u}", st.one_of(st.integers(0, 10**6), st.just(10**400)),
              st.sampled_from("smhdx")),
    st.sampled_from(["now", "+", "+1.5m", "+-1s", "2026-13-01T00:00:00Z", "Z", "9999-12-31T23:59:59-01:00",
                     "0001-01-01T00:00:00+01:00", "1e400", "NaN"]),
    json_like,
)
commands = st.one_of(st.text(plain_char, min_size=1, max_size=40), texts, json_like,
                     st.sampled_from(["true", "  ", "", "echo hi", "\x00", "a\ud800"]))
envs = st.one_of(
    st.dictionaries(st.one_of(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), texts),
                    st.one_of(st.text(plain_char, max_size=10), texts, json_like), max_size=4),
    json_like,
)
cwds = st.one_of(st.builds(lambda t: "/" + t, texts), texts, st.sampled_from(["/", "/tmp", "rel/dir", "~"]),
                 json_like)
unknown_keys = st.dictionaries(texts.filter(lambda k: k not in INPUT_FIELDS), json_like, min_size=1, max_size=2)

FIELD_STRATEGIES = {
    "id": ids,
    "command": commands,
    "max_retries": st.one_of(st.integers(-2, 2_000_000), ints, json_like),
    "priority": st.one_of(st.integers(-2, 1001), ints, json_like),
    "run_at": run_ats,
    "timeout_seconds": st.one_of(floats, ints, st.integers(0, 10**9 + 1), json_like),
    "cwd": cwds,
    "env": envs,
}


@st.composite
def job_likes(draw, unknown=True, odd_keys=True):
    """A dict shaped like job input: each field absent, valid-ish, or garbage."""
    item = {}
    if draw(st.integers(0, 9)):      # usually a plausible command
        item["command"] = draw(st.one_of(st.sampled_from(["true", "echo hi", "exit 3"]), commands))
    for field, strategy in FIELD_STRATEGIES.items():
        if field != "command" and draw(st.integers(0, 2)) == 0:
            item[field] = draw(st.one_of(st.none(), strategy))
    if unknown and draw(st.integers(0, 12)) == 0:
        item.update(draw(unknown_keys))
    if unknown and odd_keys and draw(st.integers(0, 40)) == 0:
        item[draw(st.sampled_from([1, None, 2.5, (1, 2), True]))] = 1  # non-string keys (API only)
    return item


api_values = st.one_of(job_likes(), job_likes(), job_likes(), json_like)


# ---------------------------------------------------------------- known bugs (see the xfail tests)

def _float_overflows(value):
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _has_surrogate(text):
    return isinstance(text, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def known_bug(data):
    """Name of a known, unfixed bug this input may hit, or None. The five the fuzzing found
    (tests below) are fixed, so every input is now checked strictly."""
    return None


def sanitize(data):
    """Remove what known_bug() flags, so ingest/CLI fuzzing can keep strict checks."""
    if not isinstance(data, dict) or not known_bug(data):
        return data
    COUNTS["sanitized (known bug)"] += 1
    data = dict(data)
    for f in ("run_at", "timeout_seconds"):
        if _float_overflows(data.get(f)):
            data[f] = 10**300
    for f in ("priority", "max_retries"):
        v = data.get(f)
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= LIMIT_4300:
            data[f] = 10**300
    if isinstance(data.get("env"), dict):
        data["env"] = {k: v for k, v in data["env"].items() if not _has_surrogate(k)}
    return data


# ---------------------------------------------------------------- record checks

def check_new_record(record, item):
    check_record(record)
    assert ID_PATTERN.fullmatch(record["id"])
    assert record["state"] == "pending" and record["attempts"] == 0
    assert record["command"] == item["command"]
    if item.get("id") is not None:
        assert record["id"] == item["id"]
    if item.get("priority") is not None:
        assert record["priority"] == item["priority"]
    if item.get("env") is not None:
        assert record["env"] == item["env"]
    # what is stored must be exactly what was returned (and serializable)
    assert json.loads(fsutil.dumps(record)) == record


# per-example spools live on tmpfs when there is one: fsync is free there, so more examples fit
FAST_TMP = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def fresh_spool(parent):
    spool = Spool(os.path.join(parent, "spool"))
    spool.enqueue("true", id="taken")
    return spool


# ---------------------------------------------------------------- 1. the in-process API

@settings(max_examples=1500, **FUZZ)
@given(data=st.one_of(api_values, json_like), now=st.one_of(st.none(), st.floats(0, 2e9)))
def _prop_validate_input(data, now):
    COUNTS["validate_input"] += 1
    bug = known_bug(data)
    try:
        fields = validate_input(data, {"max_retries": 3}, now=now)
    except InvalidInput as exc:
        assert isinstance(exc, FieldError), f"not a FieldError: {exc!r}"
        assert str(exc).startswith(f"{exc.field}: "), "the message must name the field"
        named = set(INPUT_FIELDS) | {"job"}
        if isinstance(data, dict):
            named |= {(k if isinstance(k, str) else repr(k))[:80] for k in data}
        assert exc.field in named or exc.field.startswith("env."), f"names no field: {exc}"
        return
    except (OverflowError, ValueError, UnicodeEncodeError):
        if bug:
            COUNTS["validate_input known-bug hits"] += 1
            return
        raise
    assert set(fields) == set(INPUT_FIELDS)
    record = new_record(fields, time.time())
    try:
        check_new_record(record, data)
    except UnicodeEncodeError:
        if bug:
            COUNTS["validate_input known-bug hits"] += 1
            return
        raise


def test_fuzz_validate_input_returns_fields_or_field_error():
    _run_counted(_prop_validate_input, "validate_input", 100)


@settings(max_examples=800, **FUZZ)
@given(items=st.lists(api_values, max_size=4))
def _prop_enqueue_many(items):
    COUNTS["enqueue_many"] += 1
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as parent:
        spool = fresh_spool(parent)
        before = tree_snapshot(spool.path)
        outside = outside_snapshot(parent)
        bug = next((b for b in map(known_bug, items) if b), None)
        note(f"known bug: {bug}")
        try:
            records = spool.enqueue_many(items)
        except InvalidInput:
            records = None
        except (OverflowError, ValueError, UnicodeEncodeError):
            if not bug:
                raise
            COUNTS["enqueue_many known-bug hits"] += 1
            records = None
        assert outside_snapshot(parent) == outside, "something was written outside the spool"
        if records is None:
            assert tree_snapshot(spool.path) == before, "a refused enqueue changed the spool"
            return
        assert len(records) == len(items)
        pending = sorted(os.listdir(os.path.join(spool.path, "pending")))
        assert len(pending) == 1 + len(items)
        assert os.listdir(os.path.join(spool.path, "tmp")) == []
        for record, item in zip(records, items):
            check_new_record(record, item)
            assert spool.find(record["id"])[0] == "pending"
            assert spool.get(record["id"]) == record
            assert os.path.exists(os.path.join(spool.path, "ids", record["id"]))
        assert len({r["id"] for r in records}) == len(records)


def test_fuzz_enqueue_many_is_all_or_nothing():
    _run_counted(_prop_enqueue_many, "enqueue_many", 80)


# ---------------------------------------------------------------- 2. dropped files

name_chars = st.characters(exclude_categories=("Cs",), exclude_characters="/\x00")


def _fit(prefix, stem, suffix, limit=255):
    """prefix+stem+suffix cut to at most `limit` UTF-8 bytes, at a character boundary."""
    room = limit - len(prefix.encode()) - len(suffix.encode())
    name = prefix + stem.encode()[:max(room, 0)].decode("utf-8", "ignore") + suffix
    return name if name not in (".", "..", "") else "dot" + name


drop_names = st.builds(
    _fit,
    st.sampled_from(["", "", "", "."]),
    st.one_of(st.text(name_chars, min_size=1, max_size=40),
              st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "😀", "x y"]), st.integers(60, 255))),
    st.sampled_from([".json", ".json", ".json", ".json", ".txt", "", ".JSON", ".json.part", ".json~"]),
)


def _clamp_ints(value):
    """json.dumps cannot write an int over 4300 digits: clamp those (anywhere in the value)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= LIMIT_4300:
        return 10**4000
    if isinstance(value, list):
        return [_clamp_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _clamp_ints(v) for k, v in value.items()}
    return value


def _json_text(value, ascii_):
    return json.dumps(_clamp_ints(value), ensure_ascii=ascii_, allow_nan=True).encode("utf-8", "surrogatepass")


contents = st.one_of(
    st.tuples(st.just("file"), st.builds(_json_text, job_likes(odd_keys=False).map(sanitize), st.booleans())),
    st.tuples(st.just("file"), st.builds(_json_text, job_likes(unknown=False).map(sanitize), st.just(True))),
    st.tuples(st.just("file"), st.builds(_json_text, json_like.map(sanitize), st.booleans())),
    st.tuples(st.just("file"), st.binary(max_size=120)),
    st.tuples(st.just("file"), st.sampled_from([b"", b"{}", b"null", b'{"command": "true"}\n{"command": "x"}',
                                                b"\xef\xbb\xbf{\"command\": \"true\"}", b'{"command":"true"',
                                                b"[" * 5000 + b"]" * 5000, b'{"command": "\\ud800"}',
                                                b'{"command": "true", "id": "taken"}',
                                                b'{"command": "true", "id": "dup"}'])),
    st.tuples(st.just("file"), st.integers(1, 3000).map(lambda n: ("[" * n + "]" * n).encode())),
    st.tuples(st.sampled_from(["symlink", "dir", "fifo", "big", "bigvalid"]), st.just(b"")),
)


def _oracle(kind, data):
    """What ingest must do with one candidate, decided independently: (valid, item)."""
    if kind != "file" or len(data) > MAX_DROP_BYTES:
        return False, None
    try:
        item = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return False, None
    try:
        validate_input(item, {"max_retries": 3})
    except InvalidInput:
        return False, None
    return True, item


@settings(max_examples=400, **FUZZ)
@given(files=st.dictionaries(drop_names, contents, min_size=1, max_size=6))
def _prop_ingest(files):
    COUNTS["ingest"] += 1
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as parent:
        spool = fresh_spool(parent)
        victim = os.path.join(parent, "victim.json")
        with open(victim, "wb") as fh:
            fh.write(b'{"command": "touch ' + os.path.join(parent, "ran").encode() + b'"}')
        os.utime(victim, ns=(10**18, 10**18))
        incoming = os.path.join(spool.path, "incoming")
        originals = {}
        for name, (kind, data) in files.items():
            path = os.path.join(incoming, name)
            if kind == "symlink":
                os.symlink(victim, path)
            elif kind == "dir":
                os.mkdir(path)
            elif kind == "fifo":
                os.mkfifo(path)
            elif kind in ("big", "bigvalid"):
                data = b'{"command": "true"}' + b" " * (MAX_DROP_BYTES - 19 + (1 if kind == "big" else 0))
                kind = "file"
            if kind == "file":
                with open(path, "wb") as fh:
                    fh.write(data)
            originals[name] = (kind, data)
        outside = outside_snapshot(parent)
        ignored = {n for n in files if n.startswith(".") or not n.endswith(".json")}
        candidates = sorted(set(files) - ignored)
        snap = tree_snapshot(incoming)
        ignored_before = {n: snap.get(n) for n in ignored}

        reports = []
        accepted, rejected = ingest.ingest_all(spool, report=lambda kind, name, value: reports.append((kind, name, value)))

        # every candidate exactly once, in order; nothing else
        assert [name for _, name, _ in reports] == candidates
        assert len(accepted) + len(rejected) == len(candidates)
        # the oracle: valid iff readable JSON that validates, and its id is still free
        taken = {"taken"}
        for kind, name, value in reports:
            valid, item = _oracle(*originals[name])
            if valid and item.get("id") is not None:
                valid = item["id"] not in taken
            note(f"{name!r}: {kind} {str(value)[:200]!r}")
            assert (kind == "accepted") == valid, f"{name!r}: {kind}: {value}"
            if kind == "accepted":
                taken.add(value["id"])
                check_new_record(value, item)
        # incoming/ keeps exactly the ignored names, untouched; tmp/ is empty
        assert sorted(os.listdir(incoming)) == sorted(ignored)
        snap = tree_snapshot(incoming)
        assert {n: snap.get(n) for n in ignored} == ignored_before
        assert os.listdir(os.path.join(spool.path, "tmp")) == []
        # one pending job per accepted file (+ the one made by fresh_spool)
        assert len(os.listdir(os.path.join(spool.path, "pending"))) == 1 + len(accepted)
        # rejected/: each rejected file beside its .error, content kept as it was
        rej_dir = os.path.join(spool.path, "rejected")
        entries = os.listdir(rej_dir)
        data_entries = [e for e in entries if not e.endswith(".error") or e[:-6] not in entries]
        assert len(data_entries) == len(rejected), entries
        for entry in data_entries:
            with open(os.path.join(rej_dir, entry + ".error"), "rb") as fh:
                assert fh.read().strip(), f"empty {entry}.error"
        expected = sorted(_describe_original(*originals[n]) for k, n, _ in reports if k == "rejected")
        assert sorted(_describe_entry(os.path.join(rej_dir, e)) for e in data_entries) == expected
        # nothing outside the spool was touched (the symlink target included); nothing ran
        assert outside_snapshot(parent) == outside
        assert not os.path.exists(os.path.join(parent, "ran"))


def _describe_original(kind, data):
    if kind == "file":
        return ("file", data)
    return (kind, b"")


def _describe_entry(path):
    st_ = os.lstat(path)
    if stat.S_ISLNK(st_.st_mode):
        return ("symlink", b"")
    if stat.S_ISDIR(st_.st_mode):
        return ("dir", b"")
    if stat.S_ISFIFO(st_.st_mode):
        return ("fifo", b"")
    with open(path, "rb") as fh:
        return ("file", fh.read())


def test_fuzz_dropped_files_end_in_pending_or_rejected():
    _run_counted(_prop_ingest, "ingest", 50)


# ---------------------------------------------------------------- 3. the CLI

def _argable(text):
    try:
        return "\x00" not in text and bool(os.fsencode(text) is not None)
    except UnicodeEncodeError:
        return False


arg_text = st.text(plain_char, max_size=30).filter(lambda t: "\x00" not in t)
flag_values = {
    "-c": st.one_of(arg_text, st.sampled_from(["true", " ", ""])),
    "--id": st.one_of(valid_ids, bad_ids.filter(_argable), arg_text),
    "--priority": st.one_of(st.integers(-5, 1100).map(str), arg_text, st.sampled_from(["9" * 5000, "1e3", " 5"])),
    "--run-at": st.one_of(st.sampled_from(["+5m", "+1d", "0", "1e400", "9" * 400, "now", "2030-01-01T00:00:00Z",
                                           "99999999999", "+99999999d"]), iso_times, arg_text),
    "--max-retries": st.one_of(st.integers(-5, 2_000_000).map(str), arg_text, st.just("1" * 400)),
    "--timeout": st.one_of(st.sampled_from(["0", "1.5", "nan", "inf", "-1", "1e400", "1" * 400]), arg_text),
}
HELPISH = {"-h", "--help", "--version"}


@st.composite
def enqueue_argvs(draw):
    argv = ["enqueue"]
    how = draw(st.integers(0, 3))
    if how < 3:
        value = sanitize(draw(job_likes(odd_keys=False) if how < 2 else json_like))
        text = json.dumps(_clamp_ints(value), ensure_ascii=True, allow_nan=True)
        if len(text) > 100_000:      # one argv string is limited to 128 KiB by Linux
            text = text[:100_000]
        argv.append(text)
    elif draw(st.booleans()):
        argv.append(draw(arg_text))
    for flag in draw(st.lists(st.sampled_from(sorted(flag_values)), max_size=3, unique=True)):
        argv += [flag, draw(flag_values[flag])]
    if draw(st.booleans()):
        argv.append("--json")
    if any(a in HELPISH for a in argv):
        argv = [a for a in argv if a not in HELPISH]
    return argv


def _new_pending_ids(before, after):
    return sorted(set(after) - set(before))


@settings(max_examples=30, **FUZZ)
@given(argv=enqueue_argvs())
def _prop_cli_enqueue(spool_dir, argv):
    COUNTS["cli enqueue"] += 1
    before = tree_snapshot(spool_dir)
    code, out, err = run_cli(spool_dir, argv)
    note(f"exit {code}\nstdout: {out}\nstderr: {err}")
    assert "Traceback" not in err
    assert code in (0, 2), (code, err)
    after = tree_snapshot(spool_dir)
    if code == 2:
        assert err.strip(), "exit 2 without a message"
        assert after == before, "exit 2 changed the spool"
        return
    new = _new_pending_ids([k for k in before if k.startswith("pending/")],
                           [k for k in after if k.startswith("pending/")])
    assert len(new) == 1, new
    record = json.loads(after[new[0]])
    check_record(record)
    if "--json" in argv:
        assert json.loads(out) == [record]
    else:
        assert out.strip() == record["id"]


@settings(max_examples=30, **FUZZ)
@given(key=st.one_of(st.sampled_from(sorted(configmod.KEYS)),
                     st.sampled_from(sorted(configmod.KEYS)).map(lambda k: k.upper().replace("-", "_")),
                     st.sampled_from(["max_retries", " worker-count ", "log-max-bytes", "nope", "", "max--retries"]),
                     arg_text),
       value=st.one_of(st.integers(-5, 10**13).map(str), st.floats(allow_nan=True).map(repr), arg_text,
                       st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 400, "9" * 5000, "1_000", "٣", "0x10",
                                        " 7 ", "1.5", "0.5", "-0", "256", "257", "", "true", " On ", "off"])))
def _prop_cli_config_set(spool_dir, key, value):
    COUNTS["cli config set"] += 1
    if key in HELPISH or value in HELPISH:
        return
    cfg = os.path.join(spool_dir, "config.json")

    def read():
        try:
            with open(cfg, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
    before = read()
    code, out, err = run_cli(spool_dir, ["config", "set", key, value])
    note(f"exit {code}\nstdout: {out}\nstderr: {err}")
    assert "Traceback" not in err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.strip()
        assert read() == before, "a refused config set changed config.json"
        return
    name = configmod.canonical_key(key)
    stored = json.loads(read())
    _, kind, low, _ = configmod.KEYS[name]
    number = stored[name]
    if kind is str:  # a shell command: stored as given, a blank one as none
        assert number == (value if value.strip() else None)
        assert out.rstrip("\n") == f"{name} = {'none' if number is None else number}"
        return
    if kind is bool:  # a switch: one of its words, stored as a JSON boolean, shown as on/off
        assert number is configmod.BOOLEAN_WORDS[value.strip().lower()]
        assert out.rstrip("\n") == f"{name} = {'on' if number else 'off'}"
        return
    assert isinstance(number, (int, float)) and not isinstance(number, bool)
    assert math.isfinite(number) and low <= number <= configmod.MAXIMUM.get(name, 10**12)
    if kind is int:
        assert isinstance(number, int)
    assert out.strip() == f"{name} = {number}"


@pytest.fixture(scope="module")
def cli_spool():
    parent = tempfile.mkdtemp(prefix="qfuzz-cli-")
    spool_dir = os.path.join(parent, "spool")
    Spool(spool_dir).enqueue("true", id="taken")
    yield spool_dir
    shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.process
def test_fuzz_cli_enqueue_exit_0_or_2(cli_spool):
    _run_counted(lambda: _prop_cli_enqueue(cli_spool), "cli enqueue", 20)


@pytest.mark.process
def test_fuzz_cli_config_set_exit_0_or_2(cli_spool):
    _run_counted(lambda: _prop_cli_config_set(cli_spool), "cli config set", 20)


# ---------------------------------------------------------------- regressions: bugs found by the fuzzing
# Each is pinned deterministically; the fuzz properties above tolerate/sanitize these inputs.

@pytest.mark.parametrize("field", ["run_at", "timeout_seconds"])
def test_bug_huge_int_run_at_or_timeout_is_a_field_error(spool, field):
    with pytest.raises(FieldError, match=field):
        spool.enqueue_many([{"command": "true", field: 10**400}])


def test_bug_dropped_file_with_huge_int_run_at_is_rejected(spool):
    with open(os.path.join(spool.path, "incoming", "a.json"), "w") as fh:
        fh.write('{"command": "true", "run_at": 1%s}' % ("0" * 400))
    accepted, rejected = ingest.ingest_all(spool)
    assert accepted == [] and len(rejected) == 1
    assert os.listdir(os.path.join(spool.path, "tmp")) == []
    assert sorted(os.listdir(os.path.join(spool.path, "rejected"))) == ["a.json", "a.json.error"]


@pytest.mark.process
@pytest.mark.parametrize("field", ["run_at", "timeout_seconds"])
def test_bug_cli_huge_int_field_exits_2(spool_dir, field):
    code, _, err = run_cli(spool_dir, ["enqueue", '{"command": "true", "%s": 1%s}' % (field, "0" * 400)])
    assert "Traceback" not in err
    assert code == 2 and field in err


@pytest.mark.parametrize("field", ["priority", "max_retries"])
def test_bug_api_int_over_4300_digits_is_a_field_error(spool, field):
    with pytest.raises(FieldError, match=field):
        spool.enqueue_many([{"command": "true", field: 10**5000}])


def test_bug_env_name_with_surrogate_is_a_field_error(spool):
    with pytest.raises(FieldError, match="env"):
        spool.enqueue_many([{"command": "true", "env": {"A\ud800": "v"}}])


@pytest.mark.process
def test_bug_cli_env_name_with_surrogate_exits_2(spool_dir):
    code, _, err = run_cli(spool_dir, ["enqueue", '{"command": "true", "env": {"\\ud800": "v"}}'])
    assert "Traceback" not in err
    assert code == 2 and "env" in err


def test_bug_dropped_file_with_surrogate_env_name_is_rejected(spool):
    with open(os.path.join(spool.path, "incoming", "a.json"), "w") as fh:
        fh.write('{"command": "true", "env": {"\\ud800": "v"}}')
    accepted, rejected = ingest.ingest_all(spool)
    assert accepted == [] and len(rejected) == 1
    assert os.listdir(os.path.join(spool.path, "tmp")) == []


@pytest.mark.process
@pytest.mark.parametrize("how", ["argument", "file"])
def test_bug_cli_deeply_nested_json_line_exits_2(spool_dir, tmp_path, how):
    text = "{}\n" + "[" * 3000 + "]" * 3000
    if how == "argument":
        code, _, err = run_cli(spool_dir, ["enqueue", text])
    else:
        path = tmp_path / "jobs.jsonl"
        path.write_text(text)
        code, _, err = run_cli(spool_dir, ["enqueue", "--file", str(path)])
    assert "Traceback" not in err
    assert code == 2


def test_bug_dropped_file_with_non_utf8_name_is_handled(spool):
    inc = os.fsencode(os.path.join(spool.path, "incoming"))
    with open(os.path.join(inc, b"\xff.json"), "wb") as fh:
        fh.write(b'{"command": "true"}')
    with open(os.path.join(inc, b"\xff\xfe-bad.json"), "wb") as fh:
        fh.write(b"not json")
    accepted, rejected = ingest.ingest_all(spool)
    assert len(accepted) == 1 and len(rejected) == 1
    assert os.listdir(inc) == []
    assert os.listdir(os.path.join(spool.path, "tmp")) == []


@pytest.mark.process
def test_bug_worker_survives_non_utf8_dropped_name(spool_dir):
    spool = Spool(spool_dir)
    inc = os.fsencode(os.path.join(spool.path, "incoming"))
    with open(os.path.join(inc, b"\xff.json"), "wb") as fh:
        fh.write(b'{"command": "true", "id": "dropped"}')
    code, out, err = run_cli(spool_dir, ["worker", "start", "--burst"], timeout=60)
    assert "Traceback" not in err + out
    assert code == 0
    assert spool.find("dropped") == ("completed", "dropped.json")
