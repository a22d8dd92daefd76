"""The ArtifactStore contract (shared.ports.ArtifactStore), for every adapter."""

from __future__ import annotations

import pytest

from shared.errors import BadInputError, NotFoundError


def test_bytes_round_trip_and_exists(artifacts):
    assert not artifacts.exists("a/b.txt")
    assert artifacts.put_bytes("a/b.txt", b"hello") is True
    assert artifacts.exists("a/b.txt")
    assert artifacts.get_bytes("a/b.txt") == b"hello"
    artifacts.put_bytes("a/b.txt", b"replaced")
    assert artifacts.get_bytes("a/b.txt") == b"replaced"


def test_put_if_absent_writes_once(artifacts):
    assert artifacts.put_bytes("cache/entry.json", b"first", if_absent=True) is True
    assert artifacts.put_bytes("cache/entry.json", b"second", if_absent=True) is False
    assert artifacts.get_bytes("cache/entry.json") == b"first"


def test_files_round_trip_and_land_whole(artifacts, tmp_path):
    source = tmp_path / "model.keras"
    source.write_bytes(b"x" * 300_000)
    artifacts.put_file(source, "studies/s/jobs/j/best.keras")
    target = tmp_path / "down" / "copy.keras"
    artifacts.get_file("studies/s/jobs/j/best.keras", target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["copy.keras"]  # no temp files left


def test_list_yields_objects_under_prefix_in_key_order(artifacts):
    for key in ["p/b.txt", "p/a.txt", "p/sub/c.txt", "q/d.txt"]:
        artifacts.put_bytes(key, key.encode())
    listed = list(artifacts.list("p/"))
    assert [info.key for info in listed] == ["p/a.txt", "p/b.txt", "p/sub/c.txt"]
    assert [info.size for info in listed] == [7, 7, 11]


def test_missing_objects_raise_not_found(artifacts, tmp_path):
    with pytest.raises(NotFoundError):
        artifacts.get_bytes("nope.txt")
    with pytest.raises(NotFoundError):
        artifacts.get_file("nope.txt", tmp_path / "x")


def test_delete_removes_object(artifacts):
    artifacts.put_bytes("gone.txt", b"1")
    artifacts.delete("gone.txt")
    assert not artifacts.exists("gone.txt")


@pytest.mark.parametrize("key", ["../escape.txt", "/abs/path", "a/../../b", "a/./b", ""])
def test_unsafe_keys_are_refused(artifacts, key):
    with pytest.raises(BadInputError):
        artifacts.put_bytes(key, b"x")


def test_uri_names_the_object(artifacts):
    assert artifacts.uri("studies/s/x.csv").endswith("studies/s/x.csv")
