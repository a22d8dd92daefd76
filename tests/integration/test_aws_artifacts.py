"""S3ArtifactStore beyond the contract: managed multipart transfers, atomic downloads, write-once,
a root prefix never repeated in keys, and `ExpectedBucketOwner` on every request."""

from __future__ import annotations

import os
import threading

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from shared.backends.aws_s3 import S3ArtifactStore
from shared.errors import BadInputError, NotFoundError
from tests.aws_support import CallCounter, fresh_aws_backend

pytestmark = pytest.mark.aws

MB = 1024 * 1024


@pytest.fixture
def aws(request):
    yield from fresh_aws_backend(request, lease_s=30.0, max_receives=3)


def test_large_files_go_multipart_and_come_back_whole(aws, tmp_path):
    store = S3ArtifactStore(
        aws.artifacts.client,
        aws.artifacts.bucket,
        transfer_config=TransferConfig(multipart_threshold=5 * MB, multipart_chunksize=5 * MB, max_concurrency=4),
    )
    counter = CallCounter(store.client)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * MB))
    assert store.put_file(source, "studies/s/jobs/j/best.keras") == f"s3://{store.bucket}/studies/s/jobs/j/best.keras"
    assert counter.calls[("s3", "CreateMultipartUpload")] == 1 and counter.calls[("s3", "UploadPart")] == 3
    target = tmp_path / "down" / "best.keras"
    store.get_file("studies/s/jobs/j/best.keras", target)
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["best.keras"]


def test_failed_download_leaves_the_target_untouched(aws, tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"the previous version")
    with pytest.raises(NotFoundError):
        aws.artifacts.get_file("studies/s/missing.keras", target)
    assert target.read_bytes() == b"the previous version"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no temporary file left behind


def test_racing_write_once_puts_have_exactly_one_winner(aws):
    results: dict[int, bool] = {}
    barrier = threading.Barrier(6)

    def put(i: int) -> None:
        barrier.wait()
        results[i] = aws.artifacts.put_bytes("cache/entry/manifest.json", f"writer {i}".encode(), if_absent=True)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert aws.artifacts.get_bytes("cache/entry/manifest.json") == f"writer {winners[0]}".encode()


def test_if_absent_is_a_conditional_put(aws):
    sent = []
    aws.artifacts.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: sent.append(dict(params))
    )
    aws.artifacts.put_bytes("once.txt", b"1", if_absent=True)
    assert sent[0]["IfNoneMatch"] == "*"


def test_prefixed_store_lists_relative_keys_and_names_full_uris(aws):
    store = S3ArtifactStore(aws.artifacts.client, aws.artifacts.bucket, prefix="/team-a/")
    store.put_bytes("p/x.txt", b"abc")
    aws.artifacts.put_bytes("p/y.txt", b"outside the prefix")
    assert [(o.key, o.size) for o in store.list("p/")] == [("p/x.txt", 3)]
    assert [o.key for o in store.list("")] == ["p/x.txt"]
    assert store.uri("p/x.txt") == f"s3://{store.bucket}/team-a/p/x.txt"
    assert aws.artifacts.exists("team-a/p/x.txt")


def test_listing_pages_through_objects_in_key_order(aws):
    keys = [f"many/{i:03d}.txt" for i in range(25)][::-1]
    for key in keys:
        aws.artifacts.put_bytes(key, b"x")
    aws.artifacts.page_size = 10
    counter = CallCounter(aws.artifacts.client)
    assert [o.key for o in aws.artifacts.list("many/")] == sorted(keys)
    assert counter.calls[("s3", "ListObjectsV2")] == 3


def test_a_prefixed_store_turns_its_own_uris_into_keys_without_repeating_its_root(aws):
    store = S3ArtifactStore(aws.artifacts.client, aws.artifacts.bucket, prefix="team-a")
    bucket = store.bucket
    assert store.key_for(f"s3://{bucket}/team-a/weights/a.weights.h5") == "weights/a.weights.h5"
    assert store.key_for(store.uri("weights/a.weights.h5")) == "weights/a.weights.h5"
    assert store.key_for("weights/a.weights.h5") == store.key_for("artifacts:weights/a.weights.h5") == "weights/a.weights.h5"
    # the key is relative to the root: reading it back finds the object put under the root once
    store.put_bytes(store.key_for(f"s3://{bucket}/team-a/p/x.txt"), b"once")
    assert aws.artifacts.exists("team-a/p/x.txt") and not aws.artifacts.exists("team-a/team-a/p/x.txt")
    with pytest.raises(BadInputError, match="outside the artifact store's root"):
        store.key_for(f"s3://{bucket}/team-b/weights/a.weights.h5")
    with pytest.raises(BadInputError, match="outside the artifact store's root"):
        store.key_for(f"s3://{bucket}/team-ab/x")  # a sibling whose name starts like the root
    with pytest.raises(BadInputError, match="is not the artifact store's bucket"):
        store.key_for("s3://another-bucket/team-a/x")


def test_every_request_names_the_bucket_owner_from_sts(aws, tmp_path):
    owners: list[bytes | None] = []  # the header of every HTTP request the backend's own client sends
    aws.artifacts.client.meta.events.register(
        "before-send.s3", lambda request, **_: owners.append(request.headers.get("x-amz-expected-bucket-owner"))
    )
    source = tmp_path / "f.bin"
    source.write_bytes(b"abc")
    store = aws.artifacts
    store.put_file(source, "o/f.bin")
    store.put_bytes("o/b.txt", b"1")
    store.put_bytes("o/once.txt", b"1", if_absent=True)
    store.get_file("o/f.bin", tmp_path / "back.bin")
    store.get_bytes("o/b.txt")
    store.exists("o/b.txt")
    list(store.list("o/"))
    store.delete("o/b.txt")
    with pytest.raises(NotFoundError):
        store.get_file("o/missing", tmp_path / "missing")  # the HEAD of the bucket too
    sts_account = boto3.client("sts").get_caller_identity()["Account"]
    assert len(owners) >= 10 and set(owners) == {sts_account.encode()}, owners
