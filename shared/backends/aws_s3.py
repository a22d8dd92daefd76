"""`S3ArtifactStore`: the ArtifactStore port on an S3 bucket (optionally under a key prefix).

- files go through boto3's managed transfers (`upload_file` / `download_file`: multipart and
  parallel above `multipart_threshold`);
- `get_file` downloads to a temporary file beside the target and renames it into place, so the
  target never holds a partial file;
- `put_bytes(if_absent=True)` is a conditional `PutObject` (`If-None-Match: *`): S3 refuses it
  with 412 when the key exists, atomically, so two racing writers get exactly one winner;
- keys are checked with `shared.paths.check_key`; a missing key is `NotFoundError`;
- with `expected_owner` (the account id) every request carries `ExpectedBucketOwner`: S3 refuses
  it (403) when the bucket belongs to another account, so a bucket squatted under the stack's
  name by someone else never receives an upload nor serves a download.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from shared.backends.aws_errors import aws_errors, error_code, generator_aws_errors, http_status, missing_message
from shared.backends.locations import parse_location
from shared.errors import NotFoundError, ResourceMissingError, RetryableError
from shared.paths import check_key
from shared.ports import ObjectInfo

MB = 1024 * 1024
DEFAULT_TRANSFER = TransferConfig(
    multipart_threshold=64 * MB, multipart_chunksize=16 * MB, max_concurrency=8, use_threads=True
)
CONDITIONAL_ATTEMPTS = 5


class S3ArtifactStore:
    """An ArtifactStore on S3 (see `shared.ports.ArtifactStore`)."""

    _kind = "S3 bucket"

    def __init__(
        self,
        s3_client: Any,
        bucket: str,
        prefix: str = "",
        transfer_config: TransferConfig | None = None,
        expected_owner: str | None = None,
    ) -> None:
        self.client = s3_client
        self.bucket = bucket
        stripped = prefix.strip("/")
        self.prefix = f"{check_key(stripped)}/" if stripped else ""
        self.transfer_config = transfer_config or DEFAULT_TRANSFER
        self.expected_owner = expected_owner
        self._owner: dict[str, str] = {"ExpectedBucketOwner": expected_owner} if expected_owner else {}
        self.page_size: int | None = None  # ListObjectsV2 MaxKeys (None: S3's 1,000)
        self._name = bucket
        self._region = None  # bucket names are global

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @aws_errors
    def put_file(self, local_path: Path, key: str) -> str:
        full = self._key(key)
        try:
            self.client.upload_file(
                str(local_path), self.bucket, full, Config=self.transfer_config, ExtraArgs=self._owner or None
            )
        except S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError):
                raise cause from None
            if "NoSuchBucket" in str(exc):
                raise ResourceMissingError(missing_message(self._kind, self.bucket, None)) from exc
            raise RetryableError(f"upload of {key!r} to s3://{self.bucket} failed: {exc}") from exc
        return self.uri(key)

    @aws_errors
    def put_bytes(self, key: str, data: bytes, if_absent: bool = False) -> bool:
        full = self._key(key)
        if not if_absent:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data, **self._owner)
            return True
        for attempt in range(CONDITIONAL_ATTEMPTS):
            try:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=data, IfNoneMatch="*", **self._owner)
                return True
            except ClientError as exc:
                code = error_code(exc)
                if code == "PreconditionFailed" or http_status(exc) == 412:
                    return False
                if code != "ConditionalRequestConflict" and http_status(exc) != 409:
                    raise
                # another conditional write of this key is in flight: see who won, shortly
                time.sleep(0.05 * 2**attempt * (0.5 + random.random() / 2))
        raise RetryableError(f"s3://{self.bucket}/{full}: conditional write still conflicting")

    @aws_errors
    def get_file(self, key: str, local_path: Path) -> None:
        full = self._key(key)
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-", dir=local_path.parent)
        os.close(fd)
        temp = Path(name)
        try:
            try:
                self.client.download_file(
                    self.bucket, full, str(temp), Config=self.transfer_config, ExtraArgs=self._owner or None
                )
            except ClientError as exc:
                if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    self._raise_missing(key)
                raise
            os.replace(temp, local_path)
        finally:
            temp.unlink(missing_ok=True)

    @aws_errors
    def get_bytes(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **self._owner)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                raise NotFoundError(f"no artifact {key!r} in {self.uri('')}") from None
            raise
        return response["Body"].read()

    @aws_errors
    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key), **self._owner)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    @generator_aws_errors
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        if prefix.strip("/"):
            check_key(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        # S3 lists keys in UTF-8 byte order, which is Python's str order: key order as promised
        pages = {"PageSize": self.page_size} if self.page_size else {}
        listing = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig=pages, **self._owner
        )
        for page in listing:
            for obj in page.get("Contents", []):
                yield ObjectInfo(obj["Key"][len(self.prefix) :], int(obj["Size"]))

    @aws_errors
    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key), **self._owner)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{check_key(key) if key else ''}"

    def key_for(self, location: str) -> str:
        return parse_location(location, self.bucket, self.prefix)

    def _raise_missing(self, key: str) -> None:
        """A HEAD's 404 does not say whether the key or the bucket is missing: ask."""
        try:
            self.client.head_bucket(Bucket=self.bucket, **self._owner)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchBucket", "NotFound"):
                raise ResourceMissingError(missing_message(self._kind, self.bucket, None)) from None
        raise NotFoundError(f"no artifact {key!r} in {self.uri('')}")

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.uri('')!r})"
