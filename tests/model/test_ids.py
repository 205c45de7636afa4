"""Server-assigned ids (fhir_server/model/ids.py): version-7 UUIDs, valid FHIR ids, in the order they were made."""
from __future__ import annotations

import re
import time
import uuid

from fhir_server.model.ids import new_id

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def test_an_id_is_a_version_7_uuid_and_a_valid_fhir_id():
    made = new_id()
    parsed = uuid.UUID(made)
    assert str(parsed) == made and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert FHIR_ID.match(made)


def test_ids_carry_their_creation_time_and_sort_in_creation_order():
    before = time.time_ns() // 1_000_000
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(first).int >> 80 <= uuid.UUID(second).int >> 80 <= after
    assert first < second


def test_ids_made_in_the_same_millisecond_differ():
    made = {new_id() for _ in range(10_000)}
    assert len(made) == 10_000


def test_a_created_resource_gets_such_an_id(client):
    created = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"},
                          headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201
    assert uuid.UUID(created.get_json()["id"]).version == 7
