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


# --- key_for: the one parser from a location to a key ---


@pytest.mark.parametrize("key", ["weights/a.weights.h5", "datasets/flowers/manifest.json", "x"])
def test_key_for_takes_keys_and_artifacts_locations(artifacts, key):
    assert artifacts.key_for(key) == key
    assert artifacts.key_for(f"artifacts:{key}") == key


def test_key_for_reads_back_a_displayed_s3_uri_and_never_a_local_path(artifacts):
    displayed = artifacts.uri("studies/s/jobs/j/best.keras")
    if displayed.startswith("s3://"):
        assert artifacts.key_for(displayed) == "studies/s/jobs/j/best.keras"
    else:  # a file path: where a person looks, never what a reader may be sent to
        with pytest.raises(BadInputError, match="not in the artifact store"):
            artifacts.key_for(displayed)


@pytest.mark.parametrize(
    "location",
    [
        "/etc/passwd",
        "~/.aws/credentials",
        "\\\\server\\share\\x",
        "C:\\Users\\x",
        "../escape.txt",
        "a/../../b",
        "artifacts:../x",
        "artifacts:/etc/passwd",
        "artifacts:",
        "s3://someone-elses-bucket/weights/a.weights.h5",
        "file:///etc/passwd",
        "https://example.com/a.weights.h5",
        "",
    ],
)
def test_key_for_refuses_what_the_store_cannot_reach_naming_it(artifacts, location):
    with pytest.raises(BadInputError) as caught:
        artifacts.key_for(location)
    assert repr(location) in str(caught.value) and "\n" not in str(caught.value)
