"""`SqsJobQueue`: the JobQueue port on Amazon SQS (standard queue + dead-letter queue).

- `send` checks every body's size first (nothing is sent if one is too large), then sends them in
  `SendMessageBatch` calls of 10 (and at most 256 KiB), retrying the entries SQS reports as
  failed; N bodies cost ceil(N/10) calls.
- `receive` long-polls (`WaitTimeSeconds`, an integer up to 20; longer waits loop) with the
  adapter's visibility timeout, and reads `ApproximateReceiveCount`.
- `delete` uses `DeleteMessageBatch` in 10s; an unknown or stale receipt is ignored.
- `extend` / `release` are `ChangeMessageVisibility`; a stale receipt -> False / no-op. SQS hides
  a message for at most 12 hours from its receipt: `extend` past that raises VisibilityLimitError
  (its code is `InvalidParameterValue` too, naming the parameter `VisibilityTimeout`).
- The dead-letter queue is the main queue's `RedrivePolicy` target (`maxReceiveCount` = the
  configured `max_receives`): SQS itself moves a message there on the receive after the last
  allowed one. `dead_letter` moves one at once: check the receipt (by keeping the message hidden),
  send it to the DLQ with the reason as a message attribute, then delete it from the queue.
- `receive_dead` / `delete_dead` take dead letters for the reconciler: a long-polled receive from
  the DLQ hiding each message for `hide_s`, and a batched delete there.
- `counts` also reports the queue's `MessageRetentionPeriod`: SQS drops older messages silently.

Stale receipts: real SQS refuses `ChangeMessageVisibility` with a receipt that a later receive
superseded (`InvalidParameterValue` / `MessageNotInflight` / `ReceiptHandleIsInvalid`); some
emulators (moto) accept any receipt the message ever had. So the adapter also remembers, for the
messages *it* received, which receipt is the latest one, and refuses a superseded one itself.
Across processes only SQS's own check applies.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from botocore.exceptions import ClientError

from shared.backends.aws_errors import aws_errors, error_code
from shared.backends.batching import backoff, bounded_batches
from shared.backends.checks import checked_bodies
from shared.errors import BadInputError, RetryableError, VisibilityLimitError
from shared.ports import Delivery, QueueCounts

BATCH = 10  # SQS's limit on entries per batch call
MAX_BATCH_BYTES = 256 * 1024  # ...and on the summed body size of one SendMessageBatch
MAX_WAIT_S = 20  # SQS's longest long poll
MAX_VISIBILITY_S = 43_200  # 12 hours
MAX_DELAY_S = 900
PEEK_VISIBILITY_S = 10  # how long `dead_letters` hides the DLQ messages it pages through
DEAD_WAIT_S = 1  # `receive_dead`'s long poll: enough to ask every host, short when the DLQ is empty
BATCH_ATTEMPTS = 6
STALE_CODES = frozenset({"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue"})
REASON_ATTRIBUTE = "spotsweep_reason"
TRACKED_RECEIPTS = 10_000


def queue_name_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def _seconds(value: float, upper: int) -> int:
    """SQS takes whole seconds: round up (a lease is never shorter than asked), clamp to the limit."""
    return max(0, min(upper, math.ceil(value)))


class SqsJobQueue:
    """A JobQueue on SQS (see `shared.ports.JobQueue` for the contract)."""

    _kind = "SQS queue"

    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        dlq_url: str,
        visibility_timeout_s: float,
        max_receives: int | None = None,
    ) -> None:
        self.client = sqs_client
        self.queue_url = queue_url
        self.dlq_url = dlq_url
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receives = max_receives  # informational: SQS's redrive policy enforces it
        self._name = queue_name_of(queue_url)
        self._region = sqs_client.meta.region_name
        self._lock = threading.Lock()
        self._latest: OrderedDict[str, str] = OrderedDict()  # message id -> latest receipt seen here
        self._message_of: OrderedDict[str, str] = OrderedDict()  # receipt -> message id

    # --- sending ---

    @aws_errors
    def send(self, bodies: Iterable[str], delay_s: int = 0) -> int:
        delay = _seconds(delay_s, MAX_DELAY_S)
        sent = 0
        for batch in _batches(checked_bodies(bodies)):
            self._send_batch(batch, delay)
            sent += len(batch)
        return sent

    def _send_batch(self, bodies: list[str], delay: int) -> None:
        pending = {str(i): body for i, body in enumerate(bodies)}
        for attempt in range(BATCH_ATTEMPTS):
            entries = [{"Id": i, "MessageBody": body} for i, body in pending.items()]
            if delay:
                for entry in entries:
                    entry["DelaySeconds"] = delay
            response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed = response.get("Failed", [])
            for failure in failed:
                if failure.get("SenderFault"):
                    raise BadInputError(
                        f"SQS refused a message ({failure.get('Code')}): {failure.get('Message', '')}"
                    )
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            if not pending:
                return
            backoff(attempt)
        raise RetryableError(f"SQS queue '{self._name}': {len(pending)} messages still failing after retries")

    # --- receiving ---

    @aws_errors
    def receive(self, max_messages: int = 1, wait_s: float = 0.0) -> list[Delivery]:
        count = max(1, min(BATCH, max_messages))
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            remaining = deadline - time.monotonic()
            wait = _seconds(remaining, MAX_WAIT_S) if remaining > 0 else 0
            response = self.client.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait,
                VisibilityTimeout=_seconds(self.visibility_timeout_s, MAX_VISIBILITY_S),
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            messages = response.get("Messages", [])
            if messages or time.monotonic() >= deadline:
                return [self._delivery(m) for m in messages]

    def _delivery(self, message: dict[str, Any]) -> Delivery:
        receipt = message["ReceiptHandle"]
        message_id = message["MessageId"]
        with self._lock:
            self._latest[message_id] = receipt
            self._latest.move_to_end(message_id)
            self._message_of[receipt] = message_id
            self._message_of.move_to_end(receipt)
            while len(self._message_of) > TRACKED_RECEIPTS:  # bounded memory: forget the oldest
                old_receipt, old_id = self._message_of.popitem(last=False)
                if self._latest.get(old_id) == old_receipt:
                    del self._latest[old_id]
        count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        return Delivery(message_id=message_id, body=message["Body"], receipt=receipt, receive_count=count)

    def _superseded(self, receipt: str) -> bool:
        """True if this adapter has since received the same message under a newer receipt."""
        with self._lock:
            message_id = self._message_of.get(receipt)
            return message_id is not None and self._latest.get(message_id) != receipt

    def _forget(self, receipt: str) -> None:
        with self._lock:
            message_id = self._message_of.pop(receipt, None)
            if message_id is not None and self._latest.get(message_id) == receipt:
                del self._latest[message_id]

    # --- acknowledging ---

    @aws_errors
    def delete(self, receipts: Sequence[str]) -> None:
        current = [r for r in dict.fromkeys(receipts) if not self._superseded(r)]
        for start in range(0, len(current), BATCH):
            self._delete_batch(self.queue_url, current[start : start + BATCH])
        for receipt in current:
            self._forget(receipt)

    def _delete_batch(self, url: str, receipts: list[str]) -> None:
        pending = {str(i): r for i, r in enumerate(receipts)}
        for attempt in range(BATCH_ATTEMPTS):
            entries = [{"Id": i, "ReceiptHandle": r} for i, r in pending.items()]
            response = self.client.delete_message_batch(QueueUrl=url, Entries=entries)
            # an unknown or stale receipt is ignored (the contract); retry only SQS-side failures
            failed = [f for f in response.get("Failed", []) if not f.get("SenderFault")]
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
            if not pending:
                return
            backoff(attempt)
        raise RetryableError(f"SQS queue '{self._name}': {len(pending)} deletes still failing after retries")

    @aws_errors
    def extend(self, receipt: str, visibility_timeout_s: float) -> bool:
        if self._superseded(receipt):
            return False
        return self._change_visibility(receipt, _seconds(visibility_timeout_s, MAX_VISIBILITY_S), limit_error=True)

    @aws_errors
    def release(self, receipt: str, delay_s: float = 0.0) -> None:
        if not self._superseded(receipt):
            self._change_visibility(receipt, _seconds(delay_s, MAX_VISIBILITY_S))

    def _change_visibility(self, receipt: str, seconds: int, limit_error: bool = False) -> bool:
        try:
            self.client.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
        except ClientError as exc:
            message = exc.response.get("Error", {}).get("Message", "")
            if limit_error and error_code(exc) == "InvalidParameterValue" and "VisibilityTimeout" in message:
                raise VisibilityLimitError(f"SQS queue '{self._name}': {message}") from None
            if error_code(exc) in STALE_CODES:
                return False
            raise
        return True

    @aws_errors
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        # A receipt that SQS no longer accepts (someone else holds the message now, or it is gone)
        # is ignored: the message is theirs to judge. Keeping it hidden meanwhile proves the receipt.
        hidden_s = _seconds(self.visibility_timeout_s, MAX_VISIBILITY_S)
        if self._superseded(delivery.receipt) or not self._change_visibility(delivery.receipt, hidden_s):
            return
        self.client.send_message(
            QueueUrl=self.dlq_url,
            MessageBody=delivery.body,
            MessageAttributes={
                REASON_ATTRIBUTE: {"DataType": "String", "StringValue": (reason or "unspecified")[:1000]},
                "spotsweep_message_id": {"DataType": "String", "StringValue": delivery.message_id},
                "spotsweep_receive_count": {"DataType": "Number", "StringValue": str(delivery.receive_count)},
            },
        )
        self._delete_batch(self.queue_url, [delivery.receipt])
        self._forget(delivery.receipt)

    # --- observing ---

    @aws_errors
    def counts(self) -> QueueCounts:
        main = self._attributes(self.queue_url)
        dead = self._attributes(self.dlq_url)
        return QueueCounts(
            visible=main["ApproximateNumberOfMessages"],
            in_flight=main["ApproximateNumberOfMessagesNotVisible"] + main["ApproximateNumberOfMessagesDelayed"],
            # + not visible: `dead_letters` and `receive_dead` hide what they page through
            dead=dead["ApproximateNumberOfMessages"] + dead["ApproximateNumberOfMessagesNotVisible"],
            retention_s=main["MessageRetentionPeriod"] or None,
        )

    def _attributes(self, url: str) -> dict[str, int]:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
            "MessageRetentionPeriod",
        ]
        attributes = self.client.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
        return {name: int(attributes.get(name, 0)) for name in names}

    @aws_errors
    def dead_letters(self, limit: int = 100) -> list[str]:
        return [message["Body"] for message in self._peek_dead(limit)]

    @aws_errors
    def dead_letter_reasons(self, limit: int = 100) -> list[tuple[str, str]]:
        """(body, reason) of the dead letters, oldest first.

        The reason is "max receives exceeded" for the messages that SQS's redrive moved there.
        """
        return [
            (
                message["Body"],
                message.get("MessageAttributes", {})
                .get(REASON_ATTRIBUTE, {})
                .get("StringValue", "max receives exceeded"),
            )
            for message in self._peek_dead(limit)
        ]

    @aws_errors
    def receive_dead(self, max_messages: int = 10, hide_s: float = 60.0) -> list[Delivery]:
        # Always a long poll: a short poll samples some SQS hosts and may answer "empty" while
        # dead letters wait on others. The DLQ has no redrive policy: receiving costs nothing.
        response = self.client.receive_message(
            QueueUrl=self.dlq_url,
            MaxNumberOfMessages=max(1, min(BATCH, max_messages)),
            WaitTimeSeconds=DEAD_WAIT_S,
            VisibilityTimeout=_seconds(hide_s, MAX_VISIBILITY_S),
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [_dead_delivery(m) for m in response.get("Messages", [])]

    @aws_errors
    def delete_dead(self, receipts: Sequence[str]) -> None:
        unique = list(dict.fromkeys(receipts))
        for start in range(0, len(unique), BATCH):
            self._delete_batch(self.dlq_url, unique[start : start + BATCH])

    def _peek_dead(self, limit: int) -> list[dict[str, Any]]:
        """The DLQ's messages without removing them, oldest first (by SentTimestamp).

        SQS has no peek: receive them (each hidden for a few seconds, so that the next page shows
        others), then make them all visible again at once.
        """
        total = sum(self._attributes(self.dlq_url)[name] for name in (
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"))
        if total == 0 or limit <= 0:
            return []
        found: dict[str, dict[str, Any]] = {}
        receipts: list[str] = []
        try:
            while len(found) < min(limit, total):
                response = self.client.receive_message(
                    QueueUrl=self.dlq_url,
                    MaxNumberOfMessages=max(1, min(BATCH, limit - len(found))),
                    WaitTimeSeconds=0 if receipts else 1,  # the first call asks every SQS host
                    VisibilityTimeout=PEEK_VISIBILITY_S,
                    MessageSystemAttributeNames=["SentTimestamp"],
                    MessageAttributeNames=[REASON_ATTRIBUTE],
                )
                messages = response.get("Messages", [])
                if not messages:
                    break
                for message in messages:
                    receipts.append(message["ReceiptHandle"])
                    found.setdefault(message["MessageId"], message)
        finally:
            self._unhide(receipts)
        ordered = sorted(found.values(), key=lambda m: int(m.get("Attributes", {}).get("SentTimestamp", 0)))
        return ordered[:limit]  # sorted() is stable: equal timestamps keep the receive order

    def _unhide(self, receipts: list[str]) -> None:
        for start in range(0, len(receipts), BATCH):
            chunk = receipts[start : start + BATCH]
            self.client.change_message_visibility_batch(
                QueueUrl=self.dlq_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(chunk)],
            )

    def __repr__(self) -> str:
        return f"SqsJobQueue({self._name!r})"


def _dead_delivery(message: dict[str, Any]) -> Delivery:
    count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
    return Delivery(message_id=message["MessageId"], body=message["Body"], receipt=message["ReceiptHandle"], receive_count=count)


def _batches(bodies: Iterable[str]) -> Iterator[list[str]]:
    """Stream bodies into SendMessageBatch-sized lists (10 entries, 256 KiB in all)."""
    return bounded_batches(bodies, BATCH, MAX_BATCH_BYTES, _size)


def _size(body: str) -> int:
    return len(body.encode())


def redrive_policy(dlq_arn: str, max_receives: int) -> str:
    return json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives})
