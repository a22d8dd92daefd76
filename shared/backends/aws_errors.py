"""botocore errors -> spotsweep's error tree (`shared.errors`).

- a missing queue, table or bucket -> `ResourceMissingError` with one line naming it;
- throttling, 5xx, connection trouble, transaction conflicts -> `RetryableError`;
- missing or refused credentials, no region -> `FatalError`;
- anything else (a validation error is a bug in spotsweep) is left as it is.

botocore already retries (mode `standard` or `adaptive`); what reaches us has used up its retries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from shared.errors import FatalError, ResourceMissingError, RetryableError, SpotsweepError

INIT_HINT = "(run `submit init --backend aws` or terraform apply)"

RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "SlowDown",
        "PriorRequestNotComplete",
        "TransactionInProgressException",
        "TransactionConflictException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "KMS.ThrottlingException",
        "OverLimit",
    }
)
# The codes of a TransactWriteItems' CancellationReasons (one per item) that mean "try again":
# AWS names them without the "Exception" suffix its top-level error codes carry.
RETRYABLE_CANCELLATION_CODES = frozenset({"TransactionConflict", "ProvisionedThroughputExceeded", "ThrottlingError"})


def cancellation_is_retryable(reasons: list[dict[str, Any]]) -> bool:
    """Whether a cancelled transaction may succeed if sent again: every item that gave a reason
    (code other than "None") was cancelled by a conflict or by throttling, none by its data
    (ConditionalCheckFailed, ValidationError, ItemCollectionSizeLimitExceeded).

    An empty list (moto, or an error without reasons) counts as retryable, as before.
    """
    codes = {reason.get("Code") for reason in reasons} - {"None", None}
    return codes <= (RETRYABLE_CODES | RETRYABLE_CANCELLATION_CODES)


MISSING_CODES = frozenset(
    {"QueueDoesNotExist", "NonExistentQueue", "ResourceNotFoundException", "NoSuchBucket"}
)
CREDENTIAL_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidSecurity",
        "MissingAuthenticationToken",
    }
)


def error_code(exc: BaseException) -> str:
    """The error code of a ClientError, without SQS's `AWS.SimpleQueueService.` prefix."""
    if not isinstance(exc, ClientError):
        return ""
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code.removeprefix("AWS.SimpleQueueService.")


def http_status(exc: BaseException) -> int:
    if not isinstance(exc, ClientError):
        return 0
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def missing_message(kind: str, name: str, region: str | None) -> str:
    where = f" in {region}" if region else ""
    return f"{kind} '{name}' does not exist{where} {INIT_HINT}"


def translate(exc: BaseException, kind: str, name: str, region: str | None) -> BaseException:
    """The spotsweep error for a botocore error met while using `kind` `name` (e.g. "SQS queue")."""
    if isinstance(exc, SpotsweepError):
        return exc
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return FatalError(
            "no usable AWS credentials found (environment, ~/.aws, SSO or instance profile): " + str(exc)
        )
    if isinstance(exc, NoRegionError):
        return FatalError("no AWS region configured: set SPOTSWEEP_REGION or AWS_DEFAULT_REGION")
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return RetryableError(f"{kind} '{name}': cannot reach AWS: {exc}")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in MISSING_CODES:
            return ResourceMissingError(missing_message(kind, name, region))
        if code in RETRYABLE_CODES or http_status(exc) >= 500:
            return RetryableError(f"{kind} '{name}': {code or http_status(exc)}: {_message(exc)}")
        if code in CREDENTIAL_CODES:
            return FatalError(f"{kind} '{name}': access refused ({code}): {_message(exc)}")
        return exc
    if isinstance(exc, BotoCoreError):
        return RetryableError(f"{kind} '{name}': {exc}")
    return exc


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)


F = TypeVar("F", bound=Callable[..., Any])


def aws_errors(method: F) -> F:
    """Decorate an adapter method: botocore errors become spotsweep errors.

    The adapter names its resource with `_kind`, `_name` and `_region` attributes.
    """

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            translated = translate(exc, self._kind, self._name, self._region)
            if translated is exc:
                raise
            raise translated from exc

    return wrapper  # type: ignore[return-value]


def generator_aws_errors(method: F) -> F:
    """`aws_errors` for generator methods (errors surface while iterating)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            yield from method(self, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            translated = translate(exc, self._kind, self._name, self._region)
            if translated is exc:
                raise
            raise translated from exc

    return wrapper  # type: ignore[return-value]
