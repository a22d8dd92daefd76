"""The one parser from a location to an artifact-store key (`ArtifactStore.key_for`).

A location is what a user writes (a study file's weights or dataset, `dataset upload`'s
destination) or what an older record holds: a bare key, `artifacts:<key>`, or `s3://bucket/key`.
Every adapter's `key_for` calls `parse_location` with what only the adapter knows (its bucket,
its root prefix), so no code outside `shared/backends/` reads an adapter's attributes.

A local path is never a key. A record is written by whoever can write the table; if a path in it
could name a file, `submit report` on a laptop would read that laptop's files.
"""

from __future__ import annotations

from shared.errors import BadInputError
from shared.paths import check_key

ARTIFACTS_SCHEME = "artifacts:"
S3_SCHEME = "s3://"


def parse_location(location: str, bucket: str | None = None, root: str = "") -> str:
    """The checked key that `location` names in a store in `bucket` (None: a local directory)
    under the root prefix `root` ("" or "team-a/"); BadInputError naming `location` otherwise."""
    if not isinstance(location, str):
        raise BadInputError(f"{location!r} is not a location of the artifact store")
    if location.startswith(ARTIFACTS_SCHEME):
        return _checked(location.removeprefix(ARTIFACTS_SCHEME), location)
    if location.startswith(S3_SCHEME):
        return _in_bucket(location, bucket, root)
    if "://" in location or location.startswith(("/", "~", "\\")):
        raise BadInputError(
            f"{location!r} is not in the artifact store: expected a key, artifacts:<key> or s3://bucket/key"
        )
    return _checked(location, location)


def _in_bucket(location: str, bucket: str | None, root: str) -> str:
    if bucket is None:
        raise BadInputError(
            f"{location!r}: the artifact store is a local directory (embedded backend), not S3: use artifacts:<key>"
        )
    named, _, rest = location.removeprefix(S3_SCHEME).partition("/")
    if named != bucket:
        raise BadInputError(f"{location!r}: bucket {named!r} is not the artifact store's bucket {bucket!r}")
    if not rest.startswith(root):
        raise BadInputError(f"{location!r}: outside the artifact store's root s3://{bucket}/{root}")
    return _checked(rest.removeprefix(root), location)


def _checked(key: str, location: str) -> str:
    try:
        return check_key(key)
    except BadInputError as exc:
        raise BadInputError(f"{location!r} is not a key of the artifact store ({exc})") from None
