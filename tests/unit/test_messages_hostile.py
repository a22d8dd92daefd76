"""Hostile queue message bodies and store records: each one refused with one line, none crashes.

A message or a record may be written by anyone with access to the queue or the table. What a
worker reads must be refused as poison (`PoisonMessage`) or as invalid (a pydantic
ValidationError, which the stores turn into `CorruptRecordError`), whatever it holds: never an
exception the worker loop does not expect, never a value that escapes a directory or asks a
worker for unbounded work.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from shared.errors import BadInputError
from shared.jobs import EpochRecord, JobMessage, JobRecord, PoisonMessage, StudyRecord, parse_message
from shared.limits import MAX_BATCH_SIZE, MAX_EPOCHS, MAX_HEAD_UNITS, MAX_IMAGE_SIZE, MAX_REPEATS, MAX_SEED
from shared.untrusted import MAX_DEPTH, load_json
from tests.factories import job_spec

VALID = json.loads(JobMessage(study_id="study-1", job_id="0123abcd", spec=job_spec("mobilenet")).to_body())


def changed(change: Callable[[dict[str, Any]], object]) -> str:
    data = copy.deepcopy(VALID)
    change(data)
    return json.dumps(data)


def spec_set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A change that sets spec.<path> (dotted) to `value`."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = data["spec"]
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value

    return change


def deep(depth: int) -> str:
    return '{"study_id": ' + "[" * depth + "]" * depth + "}"


# (label, body, words the one-line reason must hold)
HOSTILE: list[tuple[str, str | bytes, str]] = [
    ("empty", "", "invalid JSON"),
    ("not json", "hello", "invalid JSON"),
    ("truncated", json.dumps(VALID)[:40], "invalid JSON"),
    ("a list", "[1, 2]", "JSON object"),
    ("a string", '"job"', "JSON object"),
    ("null", "null", "JSON object"),
    ("not utf-8", b'{"study_id": "caf\xe9"}', "not UTF-8"),
    ("nested 100000 deep", deep(100_000), "nested deeper"),
    ("nested just past the bound", deep(MAX_DEPTH), "nested deeper"),
    ("nested inside the spec", changed(spec_set("model.head", json.loads("[" * 40 + "]" * 40))), "nested deeper"),
    ("over 256 KiB", changed(spec_set("dataset", "x" * 300_000)), "limit of 262144 bytes"),
    ("integer of 5000 digits", json.dumps(VALID).replace('"seed": 0', '"seed": ' + "9" * 5000), "invalid JSON"),
    ("NaN", changed(spec_set("optimizer.learning_rate", float("nan"))), "spec.optimizer.learning_rate"),
    ("Infinity", changed(spec_set("training.data_fraction", float("inf"))), "spec.training.data_fraction"),
    ("1e999", json.dumps(VALID).replace('"data_fraction": 1.0', '"data_fraction": 1e999'), "data_fraction"),
    ("unpaired surrogate", json.dumps(VALID).replace('"/data/flowers"', '"/data/\\udc80"'), "spec.dataset"),
    ("duplicate key", json.dumps(VALID)[:-1] + ', "job_id": "other"}', "job_id"),
    ("no schema version", changed(lambda d: d.pop("schema_version")), "schema_version"),
    ("schema version 2", changed(lambda d: d.update(schema_version=2)), "schema_version"),
    ("schema version as text", changed(lambda d: d.update(schema_version="1")), "schema_version"),
    ("unknown field", changed(lambda d: d.update(priority=9)), "priority"),
    ("spec is a string", changed(lambda d: d.update(spec="train")), "spec"),
    ("job id climbs out", changed(lambda d: d.update(job_id="../../home")), "job_id"),
    ("job id with a slash", changed(lambda d: d.update(job_id="a/b")), "job_id"),
    ("job id with NUL", changed(lambda d: d.update(job_id="a\x00b")), "job_id"),
    ("job id upper case", changed(lambda d: d.update(job_id="ABC")), "job_id"),
    ("job id empty", changed(lambda d: d.update(job_id="")), "job_id"),
    ("job id a number", changed(lambda d: d.update(job_id=7)), "job_id"),
    ("study id too long", changed(lambda d: d.update(study_id="s" * 81)), "study_id"),
    ("study id with spaces", changed(lambda d: d.update(study_id="my study")), "study_id"),
    ("parent climbs out", changed(spec_set("parent_job_id", "../x")), "spec.parent_job_id"),
    ("weights climb out", changed(spec_set("model.weights", "../../etc/passwd")), "spec.model.weights"),
    ("weights absolute", changed(spec_set("model.weights", "/root/.aws/credentials")), "spec.model.weights"),
    ("weights via scheme", changed(spec_set("model.weights", "artifacts:/etc/x")), "spec.model.weights"),
    ("unknown architecture", changed(spec_set("model.architecture", "alexnet")), "spec.model.architecture"),
    ("unknown optimizer", changed(spec_set("optimizer", {"name": "lion"})), "spec.optimizer.name"),
    ("unknown monitor", changed(spec_set("training.early_stopping", {"monitor": "val_f1"})), "monitor"),
    ("image size 1e9", changed(spec_set("model.image_size", 10**9)), "spec.model.image_size"),
    ("batch size 1e9", changed(spec_set("training.batch_size", 10**9)), "spec.training.batch_size"),
    ("epochs 1e15", changed(spec_set("training.epochs", 10**15)), "spec.training.epochs"),
    ("head units 1e9", changed(spec_set("model.head.units", 10**9)), "spec.model.head.units"),
    ("patience 1e9", changed(spec_set("training.early_stopping", {"patience": 10**9})), "patience"),
    ("repeat 1e6", changed(spec_set("repeat", 10**6)), "spec.repeat"),
    ("seed 2**40", changed(spec_set("training.seed", 2**40)), "spec.training.seed"),
    ("unfreeze from 1e9", changed(spec_set("unfreeze_from", 10**9)), "spec.unfreeze_from"),
    ("layer name of 10000 chars", changed(spec_set("unfreeze_from", "x" * 10_000)), "spec.unfreeze_from"),
]


@pytest.mark.parametrize(("label", "body", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_body_is_poison_with_one_line(label, body, words):
    with pytest.raises(PoisonMessage) as info:
        parse_message(body)
    reason = str(info.value)
    assert "\n" not in reason and len(reason) < 400, reason
    assert words in reason, reason


def test_the_valid_body_parses_and_survives_a_round_trip():
    message = parse_message(json.dumps(VALID))
    assert parse_message(message.to_body()) == message
    assert parse_message(message.to_body().encode()) == message


def test_nesting_up_to_the_bound_is_parsed_then_validated():
    with pytest.raises(PoisonMessage) as info:
        parse_message(deep(MAX_DEPTH - 1))
    assert "nested" not in str(info.value) and "schema_version" in str(info.value)


def test_a_message_from_an_older_submitter_with_attempt_hint_still_runs():
    message = parse_message(changed(lambda d: d.update(attempt_hint=3)))
    assert message.job_id == VALID["job_id"] and "attempt_hint" not in message.to_body()


def test_caps_at_the_message_door_accept_the_cap_itself():
    body = changed(lambda d: d["spec"].update(
        model={**d["spec"]["model"], "image_size": MAX_IMAGE_SIZE, "head": {"units": MAX_HEAD_UNITS}},
        training={"batch_size": MAX_BATCH_SIZE, "epochs": MAX_EPOCHS, "seed": MAX_SEED + MAX_REPEATS - 1},
        repeat=MAX_REPEATS - 1,
    ))
    spec = parse_message(body).spec
    assert (spec.model.image_size, spec.training.epochs, spec.repeat) == (MAX_IMAGE_SIZE, MAX_EPOCHS, MAX_REPEATS - 1)


@pytest.mark.parametrize("bad_id", ["../x", "a/b", "", "X", "a" * 81, "a\nb"])
def test_records_refuse_ids_that_are_not_ids(bad_id):
    record = json.loads(JobRecord(study_id="study-1", job_id="j1", spec=job_spec()).model_dump_json())
    for model, data, field in [
        (JobRecord, record, "job_id"),
        (JobRecord, record, "study_id"),
        (EpochRecord, {"study_id": "s1", "job_id": "j1", "epoch": 1, "attempt": 1, "metrics": {}}, "job_id"),
        (StudyRecord, {"study_id": "s1", "name": "n", "created_at": 0.0, "spec": {}}, "study_id"),
    ]:
        with pytest.raises(ValidationError) as info:
            model.model_validate({**data, field: bad_id})
        assert info.value.errors()[0]["loc"] == (field,)


def test_a_record_whose_spec_breaks_a_cap_is_invalid():
    record = json.loads(JobRecord(study_id="study-1", job_id="j1", spec=job_spec()).model_dump_json())
    record["spec"]["training"]["epochs"] = 10**15
    with pytest.raises(ValidationError):
        JobRecord.model_validate(record)


def test_nesting_that_passes_the_bracket_count_still_fails_cleanly():
    # The bracket count runs first; were it ever set above what the parser's stack takes, the
    # parser's own RecursionError must still come out as bad input, never as a crash.
    with pytest.raises(BadInputError) as info:
        load_json("[" * 200_000 + "]" * 200_000, "doc", 10**7, max_depth=10**6)
    assert str(info.value).startswith("doc: invalid JSON")
