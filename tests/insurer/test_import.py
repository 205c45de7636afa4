"""Bulk ingestion ($import): NDJSON run in a background job with progress and a per-line error report,
through validation and the access gate of the kick-off's principal."""
from __future__ import annotations

import json

from feed_helpers import NDJSON, PATIENTS, care_item, identifiers

from fhir_server.carehistory import INSURER_SYSTEM
from fhir_server.model.outcome import FHIRError


def ndjson(*lines) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def kick_off(feed, body: bytes, headers=None):
    response = feed.post("/fhir/$import", body, headers or feed.insurer, NDJSON)
    assert response.status_code == 202, response.get_json()
    return response.headers["Content-Location"]


def finish(feed, status_url: str, headers=None) -> dict:
    feed.server.bulk.worker.run_pending()
    response = feed.client.get(status_url, headers=headers or feed.insurer)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def download(feed, url: str, headers=None) -> list[dict]:
    response = feed.client.get(url, headers=headers or feed.insurer)
    assert response.status_code == 200 and response.mimetype == NDJSON
    return [json.loads(line) for line in response.data.splitlines()]


def test_an_uploaded_ndjson_is_imported_in_the_background_with_a_per_line_report(feed):
    body = ndjson(care_item("a1"), care_item("a2", "pb"), b"{not json", care_item("x1", "nobody"),
                  dict(care_item("x2"), identifier=[]), care_item("a3"))
    status_url = kick_off(feed, body)
    assert status_url.startswith("http://fhir.test/fhir/$import-status/")
    queued = feed.client.get(status_url, headers=feed.insurer)
    assert queued.status_code == 202 and queued.headers["X-Progress"] == "queued"
    manifest = finish(feed, status_url)
    assert manifest["request"] == "http://fhir.test/fhir/$import" and manifest["requiresAccessToken"] is True
    [output], [error] = manifest["output"], manifest["error"]
    assert output["count"] == 3 and error["count"] == 3 and error["type"] == "OperationOutcome"
    summary = download(feed, output["url"])[0]["issue"][0]["diagnostics"]
    assert "6 lines, 3 created, 0 updated, 0 unchanged" in summary and "3 refused" in summary
    refused = download(feed, error["url"])
    assert [o["issue"][0]["expression"][0].split(".")[0] for o in refused] == ["line[3]", "line[4]", "line[5]"]
    assert "not valid JSON" in refused[0]["issue"][0]["diagnostics"]
    assert "Unknown patient Patient/nobody" in refused[1]["issue"][0]["diagnostics"]
    assert refused[1]["issue"][0]["expression"] == ["line[4].ExplanationOfBenefit.patient"]
    assert refused[2]["issue"][0]["diagnostics"].startswith("line 5 (400): a care item needs the insurer's identifier")
    stored = feed.get("/fhir/ExplanationOfBenefit", feed.admin).get_json()
    assert identifiers(stored) == ["a1", "a2", "a3"]


def test_reimporting_the_same_file_changes_nothing_and_corrections_make_new_versions(feed):
    items = [care_item(f"a{n}") for n in range(5)]
    finish(feed, kick_off(feed, ndjson(*items)))
    items[2] = care_item("a2", code="VG")  # corrected
    manifest = finish(feed, kick_off(feed, ndjson(*items)))
    summary = download(feed, manifest["output"][0]["url"])[0]["issue"][0]["diagnostics"]
    assert "5 lines, 0 created, 1 updated, 4 unchanged" in summary and manifest["error"] == []
    found = feed.get(f"/fhir/ExplanationOfBenefit?identifier={INSURER_SYSTEM}|a2", feed.admin).get_json()
    assert found["entry"][0]["resource"]["meta"]["versionId"] == "2"
    untouched = feed.get(f"/fhir/ExplanationOfBenefit?identifier={INSURER_SYSTEM}|a3", feed.admin).get_json()
    assert untouched["entry"][0]["resource"]["meta"]["versionId"] == "1"


def test_the_job_runs_with_the_kick_off_principal(feed):
    reader = feed.auth("system/*.rs system/Patient.cu", sub="reader")  # may write Patients, not care items
    manifest = finish(feed, kick_off(feed, ndjson(care_item("a1")), reader), reader)
    [refused] = download(feed, manifest["error"][0]["url"], reader)
    assert refused["issue"][0]["diagnostics"].startswith("line 1 (403)")
    assert feed.get("/fhir/ExplanationOfBenefit", feed.admin).get_json().get("entry") is None
    nothing = feed.post("/fhir/$import", ndjson(care_item("a1")), feed.patient("pa"), NDJSON)
    assert nothing.status_code == 403  # a token that may write nothing cannot start an import


def test_only_the_client_that_started_an_import_sees_it(feed):
    status_url = kick_off(feed, ndjson(care_item("a1")))
    other = feed.auth("system/*.cruds", sub="someone-else")
    assert feed.client.get(status_url, headers=other).status_code == 404
    manifest = finish(feed, status_url)
    assert feed.client.get(manifest["output"][0]["url"], headers=other).status_code == 404
    assert feed.client.delete(status_url, headers=feed.insurer).status_code == 202
    assert feed.client.get(status_url, headers=feed.insurer).status_code == 404


def test_parameters_name_files_of_this_server(feed):
    """The input of a Parameters kick-off is an $export-file URL of one of the caller's own exports."""
    admin = feed.auth("system/*.cruds", sub="migration")
    finish(feed, kick_off(feed, ndjson(care_item("a1"), care_item("a2")), admin), admin)
    export = feed.get("/fhir/$export?_type=ExplanationOfBenefit", {**admin, "Prefer": "respond-async"})
    exported = finish(feed, export.headers["Content-Location"], admin)["output"][0]["url"]
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "input", "part": [
        {"name": "type", "valueCode": "ExplanationOfBenefit"}, {"name": "url", "valueUrl": exported}]}]}
    response = feed.post("/fhir/$import", parameters, admin)
    assert response.status_code == 202, response.get_json()
    manifest = finish(feed, response.headers["Content-Location"], admin)
    assert manifest["output"][0]["inputUrl"] == exported and manifest["output"][0]["count"] == 2
    assert "0 created, 0 updated, 2 unchanged" in download(feed, manifest["output"][0]["url"], admin)[0][
        "issue"][0]["diagnostics"]
    elsewhere = dict(parameters, parameter=[{"name": "input", "part": [
        {"name": "url", "valueUrl": "https://insurer.example/items.ndjson"}]}])
    refused = feed.post("/fhir/$import", elsewhere, admin)
    assert refused.status_code == 400 and "not a file of this server" in refused.get_json()["issue"][0]["diagnostics"]


def test_an_import_prepared_by_worker_processes_reports_bad_lines_by_number_and_loads_the_rest(feed):
    """Validation and indexing ahead of the writes in forked workers (chunks of 2, so lines cross chunks and
    workers): same per-line report, same writes, the patient lookup and the identifier match in the write."""
    importer = feed.server.imports.importer
    importer.workers, importer.parallel_from, importer.chunk = 2, 0, 2
    admin = feed.auth("system/*.cruds", sub="migration")
    newcomer = dict(PATIENTS[0], id="pc")
    invalid = dict(care_item("x3"), status="no-such-status")
    body = ndjson(care_item("a1"), b"{not json", care_item("x1", "pc"), newcomer, care_item("a2", "pc"),
                  invalid, dict(care_item("x2"), identifier=[]), care_item("a3", "pb"),
                  care_item("a3", "pb", code="VG"), care_item("a4"))
    manifest = finish(feed, kick_off(feed, body, admin), admin)
    summary = download(feed, manifest["output"][0]["url"], admin)[0]["issue"][0]["diagnostics"]
    assert "10 lines, 5 created, 1 updated, 0 unchanged" in summary and "4 refused" in summary
    refused = download(feed, manifest["error"][0]["url"], admin)
    assert [o["issue"][0]["expression"][0].split(".")[0] for o in refused] == [
        "line[2]", "line[3]", "line[6]", "line[7]"]
    assert "not valid JSON" in refused[0]["issue"][0]["diagnostics"]
    assert "Unknown patient Patient/pc" in refused[1]["issue"][0]["diagnostics"]  # line 4 creates it later
    assert refused[2]["issue"][0]["diagnostics"].startswith("line 6 (400)")
    assert refused[3]["issue"][0]["diagnostics"].startswith("line 7 (400): a care item needs the insurer's")
    stored = feed.get("/fhir/ExplanationOfBenefit", feed.admin).get_json()
    assert identifiers(stored) == ["a1", "a2", "a3", "a4"]
    a3 = feed.get(f"/fhir/ExplanationOfBenefit?identifier={INSURER_SYSTEM}|a3", feed.admin).get_json()
    assert a3["total"] == 1 and a3["entry"][0]["resource"]["meta"]["versionId"] == "2"  # one item, then updated
    # sent again: the identical lines recognised, line 3 goes in now that its patient exists, a3 twice again
    again = finish(feed, kick_off(feed, body, admin), admin)
    summary = download(feed, again["output"][0]["url"], admin)[0]["issue"][0]["diagnostics"]
    assert "10 lines, 1 created, 2 updated, 4 unchanged" in summary and "3 refused" in summary


def test_an_identifier_twice_in_one_chunk_is_created_once_then_updated(feed):
    """The chunk's matches come from one query; an item written by a line of the chunk is matched again."""
    importer = feed.server.imports.importer
    importer.workers, importer.parallel_from = 2, 0
    finish(feed, kick_off(feed, ndjson(care_item("b0"))))
    body = ndjson(care_item("b1"), care_item("b1", code="VG"), care_item("b0", code="VG"), care_item("b0"),
                  care_item("b1", code="VG"), care_item("b2"), care_item("b2"))
    manifest = finish(feed, kick_off(feed, body))
    summary = download(feed, manifest["output"][0]["url"])[0]["issue"][0]["diagnostics"]
    assert "7 lines, 2 created, 3 updated, 2 unchanged" in summary and manifest["error"] == []
    versions = {}
    for item in ("b0", "b1", "b2"):
        found = feed.get(f"/fhir/ExplanationOfBenefit?identifier={INSURER_SYSTEM}|{item}", feed.admin).get_json()
        assert found["total"] == 1
        versions[item] = found["entry"][0]["resource"]["meta"]["versionId"]
    assert versions == {"b0": "3", "b1": "2", "b2": "1"}


def test_the_identifier_query_is_the_one_the_criteria_parse_to(feed):
    from fhir_server.bulk.imports import _criteria, identifier_query
    parser = feed.server.resources.parser
    def outcome(parse, values):
        try:
            return parse(values)
        except FHIRError as exc:
            return exc.status, [i.diagnostics for i in exc.issues]
    for values in (["a1"], ["8-0-1", "8-0-2", "x"], ["a,b", "c|d", "e\\f", "g$h", "ünï", " sp ace "],
                   ["a+b"], ["100%"], ["x&identifier=y"], ["what?"], ["a#b"], ["a1", "b+c"]):
        assert outcome(lambda v: identifier_query(parser, v), values) == \
            outcome(lambda v: parser.criteria("ExplanationOfBenefit", _criteria(v)), values), values


def test_identifiers_with_characters_of_the_criteria_syntax_match_their_own_item(feed):
    # the search syntax's , | \ $ and the query string's + % & ? #: each identifier still finds its own item
    odd = ["a,1", "b|2", "c\\3", "d$4", "e+5", "f%6", "g&identifier=7", "h?8", "i#9"]
    items = [care_item(value) for value in odd]
    finish(feed, kick_off(feed, ndjson(*items)))
    items[1] = care_item("b|2", code="VG")
    items[4] = care_item("e+5", code="VG")
    manifest = finish(feed, kick_off(feed, ndjson(*items, care_item("a,1"))))
    summary = download(feed, manifest["output"][0]["url"])[0]["issue"][0]["diagnostics"]
    assert "10 lines, 0 created, 2 updated, 8 unchanged" in summary and manifest["error"] == []


def test_a_chunk_goes_to_the_workers_as_its_lines():
    import pickle

    from fhir_server.bulk.imports import _Lines
    from fhir_server.model import jsonio
    lines = [json.dumps(care_item("a1")).encode() + b"\n", b"{not json\n", json.dumps(care_item("a2")).encode(),
             json.dumps(PATIENTS[0]).encode()]
    entries = [(1, "prepare", jsonio.loads(lines[0])), (2, "early", (400, ["not valid JSON"])),
               (3, "same", jsonio.loads(lines[2])), (4, "inline", jsonio.loads(lines[3]))]
    chunk = _Lines(entries, lines)
    assert list(chunk) == entries
    sent = pickle.dumps(chunk)
    assert len(sent) < len(pickle.dumps(entries))
    assert pickle.loads(sent) == [entries[0], entries[1], (3, "same", None), (4, "inline", None)]
