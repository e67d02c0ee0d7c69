"""The rescan's "list only what changed" (queuectl/folderstamp.py), on a local folder with
its times set by hand."""
import os
import time

import pytest

from queuectl import folderstamp
from queuectl.folderstamp import FolderStamp


def settle(path, seconds_ago=60):
    """Make the folder's last change look `seconds_ago` old."""
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "pending"
    path.mkdir()
    return str(path)


def list_once(stamp):
    look = stamp.look()
    stamp.listed(look)


def test_a_folder_never_listed_must_be_listed(folder):
    stamp = FolderStamp(folder)
    assert stamp.changed(stamp.look())


def test_an_old_unchanged_folder_is_not_listed_again(folder):
    settle(folder)
    stamp = FolderStamp(folder)
    list_once(stamp)
    assert not stamp.changed(stamp.look())


@pytest.mark.parametrize("change", ["create", "remove", "rename in", "rename out"])
def test_every_change_of_a_name_is_seen(folder, tmp_path, change):
    inside = os.path.join(folder, "a.json")
    outside = str(tmp_path / "b.json")
    open(outside if change == "rename in" else inside, "w").close()
    settle(folder)
    stamp = FolderStamp(folder)
    list_once(stamp)
    assert not stamp.changed(stamp.look())
    if change == "create":
        open(os.path.join(folder, "c.json"), "w").close()
    elif change == "remove":
        os.unlink(inside)
    elif change == "rename in":
        os.rename(outside, os.path.join(folder, "b.json"))
    else:
        os.rename(inside, outside)
    assert stamp.changed(stamp.look())


def test_a_listing_soon_after_a_change_is_not_trusted(folder):
    """Another change in the same timestamp tick (or from a host whose clock is a second
    behind) would leave the mtime as it is: a listing made within SETTLE of the last change
    proves nothing, so the next look lists again."""
    stamp = FolderStamp(folder)
    settle(folder, seconds_ago=folderstamp.SETTLE / 2)
    list_once(stamp)
    assert stamp.changed(stamp.look())
    settle(folder, seconds_ago=folderstamp.SETTLE * 2)
    list_once(stamp)
    assert not stamp.changed(stamp.look())


def test_a_full_look_comes_after_full_look_seconds(folder, monkeypatch):
    settle(folder)
    stamp = FolderStamp(folder)
    list_once(stamp)
    real = time.monotonic
    monkeypatch.setattr(folderstamp.time, "monotonic", lambda: real() + folderstamp.FULL_LOOK + 1)
    assert stamp.changed(stamp.look())


def test_a_folder_that_cannot_be_stat_counts_as_changed(tmp_path):
    stamp = FolderStamp(str(tmp_path / "gone"))
    list_once(stamp)
    assert stamp.changed(stamp.look())


def test_forget_makes_the_next_look_list(folder):
    settle(folder)
    stamp = FolderStamp(folder)
    list_once(stamp)
    stamp.forget()
    assert stamp.changed(stamp.look())
