"""The JobQueue contract (shared.ports.JobQueue), for every adapter."""

from __future__ import annotations

import time

import pytest

from shared.errors import BadInputError
from shared.jobs import MAX_MESSAGE_BYTES
from shared.ports import Delivery
from tests.contract.conftest import LEASE_S, MAX_RECEIVES


def receive_one(queue, wait_s: float = 5.0):
    deliveries = queue.receive(max_messages=1, wait_s=wait_s)
    assert len(deliveries) == 1, deliveries
    return deliveries[0]


def test_sent_message_is_received_once_with_count_one(queue):
    assert queue.send(["hello"]) == 1
    delivery = receive_one(queue)
    assert (delivery.body, delivery.receive_count) == ("hello", 1)
    assert queue.receive(max_messages=1, wait_s=0) == []  # invisible while in flight


def test_many_messages_are_sent_in_batches_and_all_received(queue):
    bodies = [f"m{i}" for i in range(23)]
    assert queue.send(bodies) == 23
    seen = []
    deadline = time.monotonic() + 20
    while len(seen) < 23 and time.monotonic() < deadline:
        for delivery in queue.receive(max_messages=10, wait_s=1):
            seen.append(delivery.body)
            queue.delete([delivery.receipt])
    assert sorted(seen) == sorted(bodies)


def test_unacked_message_reappears_after_visibility_timeout(queue):
    queue.send(["again"])
    first = receive_one(queue)
    time.sleep(LEASE_S + 0.5)
    second = receive_one(queue)
    assert second.body == "again" and second.receive_count == 2
    assert second.receipt != first.receipt


def test_deleted_message_never_comes_back(queue):
    queue.send(["done"])
    queue.delete([receive_one(queue).receipt])
    time.sleep(LEASE_S + 0.5)
    assert queue.receive(max_messages=1, wait_s=0.5) == []
    assert queue.counts().backlog == 0


def test_extend_keeps_message_invisible_past_timeout(queue):
    queue.send(["long job"])
    delivery = receive_one(queue)
    assert queue.extend(delivery.receipt, LEASE_S * 3) is True
    time.sleep(LEASE_S + 0.5)
    assert queue.receive(max_messages=1, wait_s=0) == []
    assert queue.counts().in_flight == 1


def test_extend_with_stale_receipt_is_refused(queue):
    queue.send(["taken over"])
    stale = receive_one(queue)
    time.sleep(LEASE_S + 0.5)
    receive_one(queue)  # another worker takes it: the first receipt is stale now
    assert queue.extend(stale.receipt, LEASE_S * 3) is False


def test_release_makes_message_visible_at_once(queue):
    queue.send(["retry me"])
    queue.release(receive_one(queue).receipt)
    again = receive_one(queue, wait_s=2)
    assert again.body == "retry me" and again.receive_count == 2


def test_message_received_too_often_goes_to_dead_letters(queue):
    queue.send(["poisonous"])
    for _ in range(MAX_RECEIVES):
        queue.release(receive_one(queue).receipt)
    assert queue.receive(max_messages=1, wait_s=1) == []
    deadline = time.monotonic() + 10
    while queue.counts().dead < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert queue.dead_letters() == ["poisonous"]


def test_dead_letter_moves_message_aside_at_once(queue):
    queue.send(["not json", "fine"])
    deliveries = queue.receive(max_messages=2, wait_s=2)
    while len(deliveries) < 2:
        deliveries += queue.receive(max_messages=1, wait_s=2)
    bad = next(d for d in deliveries if d.body == "not json")
    queue.dead_letter(bad, "invalid JSON")
    assert queue.dead_letters() == ["not json"]
    assert queue.counts().dead == 1


def test_an_oversized_body_is_refused_and_nothing_is_sent(queue):
    bodies = ["fine", "x" * (MAX_MESSAGE_BYTES + 1), "also fine"]
    with pytest.raises(BadInputError, match=r"^bodies\[1\]: message body of 262145 bytes") as raised:
        queue.send(bodies)
    assert raised.value.path == "bodies[1]"
    assert queue.receive(max_messages=10, wait_s=0.5) == []
    assert queue.counts().backlog == 0


def test_receive_returns_at_most_ten(queue):
    assert queue.send([f"m{i}" for i in range(12)]) == 12
    deliveries = queue.receive(max_messages=25, wait_s=2)
    assert 1 <= len(deliveries) <= 10
    assert len(queue.receive(max_messages=0, wait_s=2)) == 1  # clamped up to one


def test_unknown_and_superseded_receipts_are_ignored(queue):
    queue.send(["held"])
    first = receive_one(queue)
    queue.release(first.receipt)
    current = receive_one(queue, wait_s=2)  # received again: `first` is superseded
    for receipt in ("unknown-receipt", first.receipt):
        queue.delete([receipt])
        queue.release(receipt)
        assert queue.extend(receipt, LEASE_S * 3) is False
    queue.dead_letter(first, "a superseded delivery")
    queue.dead_letter(Delivery("unknown", "held", "unknown-receipt", 1), "an unknown delivery")
    assert queue.receive(max_messages=1, wait_s=0) == []  # still in flight with `current`
    assert queue.dead_letters() == []
    assert queue.extend(current.receipt, LEASE_S) is True
    queue.delete([current.receipt])
    assert queue.counts().backlog == 0


# --- dead letters for the reconciler: receive_dead / delete_dead ---


def dead_lettered(queue, bodies: list[str]) -> None:
    """Put `bodies` in the dead-letter queue (received, then moved there at once)."""
    queue.send(bodies)
    deadline = time.monotonic() + 20
    moved = 0
    while moved < len(bodies) and time.monotonic() < deadline:
        for delivery in queue.receive(max_messages=10, wait_s=1):
            queue.dead_letter(delivery, "test")
            moved += 1
    assert moved == len(bodies)


def test_receive_dead_hides_what_it_takes_and_delete_dead_removes_it(queue):
    dead_lettered(queue, ["keep me", "drop me"])
    taken = queue.receive_dead(max_messages=10, hide_s=2)
    while len(taken) < 2:
        taken += queue.receive_dead(max_messages=10, hide_s=2)
    assert sorted(d.body for d in taken) == ["drop me", "keep me"]
    assert queue.receive_dead(max_messages=10, hide_s=2) == []  # hidden while being handled
    queue.delete_dead([d.receipt for d in taken if d.body == "drop me"] + ["unknown-receipt"])
    assert queue.counts().dead == 1
    time.sleep(2.5)
    assert queue.dead_letters() == ["keep me"]
    again = queue.receive_dead(max_messages=10, hide_s=2)
    assert [d.body for d in again] == ["keep me"]  # not deleted: it came back
    assert queue.receive(max_messages=10, wait_s=0) == []  # never back on the job queue


def test_receive_dead_pages_through_every_dead_letter(queue):
    bodies = [f"dead-{i}" for i in range(23)]
    dead_lettered(queue, bodies)
    seen: list[str] = []
    while page := queue.receive_dead(max_messages=10, hide_s=30):
        assert len(page) <= 10
        seen += [d.body for d in page]
        queue.delete_dead([d.receipt for d in page])
    assert sorted(seen) == sorted(bodies)
    assert queue.counts().dead == 0


def test_counts_report_the_retention(queue):
    retention_s = queue.counts().retention_s
    assert retention_s is None or retention_s > 0
