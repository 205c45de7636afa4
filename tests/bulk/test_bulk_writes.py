"""The bulk write loops (``fhir-server load``, ``$import``) with their preparation in worker processes: what the
workers send back is lean (no resources, no warnings), and what is stored is exactly what the same load
stores when everything happens in this process."""
from __future__ import annotations

import json

from fhir_server.access.gate import ANONYMOUS, OpenGate
from fhir_server.app import create_app
from fhir_server.services.loader import Loader, Prepared, _worker_prepare_chunk
from fhir_server.settings import Settings
from fhir_server.store.sqlite import SQLiteStore


def patient(n: int) -> dict:
    return {"resourceType": "Patient", "id": f"p{n}", "meta": {"tag": [{"code": f"t{n}"}]},
            "name": [{"family": f"Family{n}"}], "gender": "female" if n % 2 else "male"}


def stored_bodies(server, count: int) -> list[dict]:
    out = []
    for n in range(count):
        body = json.loads(server.store.read("Patient", f"p{n}").body)
        del body["meta"]["lastUpdated"]
        out.append(body)
    return out


def test_a_load_with_workers_stores_what_a_load_in_this_process_stores(store, engine, tmp_path):
    items = [(f"p{n}", patient(n)) for n in range(9)]
    server = create_app(Settings(insecure_no_auth=True, audit=False), store=store, gate=OpenGate(),
                        engine=engine).extensions["fhir"]
    report = Loader(server.resources, ANONYMOUS, workers=2, worker_server=lambda: server).load(items, chunk_size=4)
    assert report.loaded == 9 and not report.rejected
    single = create_app(Settings(insecure_no_auth=True, audit=False), store=SQLiteStore(tmp_path / "one.sqlite3"),
                        gate=OpenGate(), engine=engine).extensions["fhir"]
    assert Loader(single.resources, ANONYMOUS).load(items, chunk_size=4).loaded == 9
    assert stored_bodies(server, 9) == stored_bodies(single, 9)
    assert stored_bodies(server, 9)[3] == dict(patient(3), meta={"tag": [{"code": "t3"}], "versionId": "1"})
    query = server.parser.parse(("Patient",), [("gender", "female")]).query
    assert sorted(r.id for r in server.store.search(query, count=20).resources) == ["p1", "p3", "p5", "p7"]


def test_the_workers_answer_without_the_resources_and_warnings(store, engine):
    server = create_app(Settings(insecure_no_auth=True, audit=False), store=store, gate=OpenGate(),
                        engine=engine).extensions["fhir"]
    ready = _worker_prepare_chunk(server.resources, [("a", patient(1)), ("b", {"resourceType": "Spaceship"})])
    assert isinstance(ready[0][1], Prepared) and ready[0][1].resource is None and ready[0][1].issues == []
    assert ready[0][1].index.tokens and isinstance(ready[1][1], str)
