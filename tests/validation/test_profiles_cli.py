"""``fhir-server validate FILE... [--profile URL]``: no server, per-resource report, exit status."""
from __future__ import annotations

import json
from pathlib import Path

from fhir_server.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"
T = "https://test.example.org/fhir/StructureDefinition/"
PATIENT = {"resourceType": "Patient", "id": "p1", "active": True,
           "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "180012B123456"}],
           "name": [{"family": "Martin"}], "gender": "female"}


def run(capsys, *args) -> tuple[int, str]:
    status = main(["validate", *map(str, args)])
    return status, capsys.readouterr().out


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_a_valid_file_exits_0(tmp_path, capsys):
    status, out = run(capsys, write(tmp_path / "p.json", PATIENT))
    assert status == 0
    assert "Patient/p1  OK" in out and "1 resource(s): 0 with errors" in out


def test_an_invalid_file_exits_1_and_prints_the_issues(tmp_path, capsys):
    status, out = run(capsys, write(tmp_path / "p.json", dict(PATIENT, gender="robot")))
    assert status == 1
    assert "INVALID" in out and "Patient.gender" in out and "[code-invalid]" in out


def test_any_r4_type_not_only_the_served_ones(tmp_path, capsys):
    status, out = run(capsys, write(tmp_path / "l.json", {"resourceType": "Location", "status": "sleeping"}))
    assert status == 1 and "Location.status" in out


def test_profile_option_and_ig_folders(tmp_path, capsys):
    good = write(tmp_path / "good.json", PATIENT)
    status, out = run(capsys, good, "--ig", FIXTURES, "--profile", T + "test-patient")
    assert status == 0, out
    bad = write(tmp_path / "bad.json", dict(PATIENT, active=False))
    status, out = run(capsys, bad, "--ig", FIXTURES, "--profile", T + "test-patient")
    assert status == 1 and "Patient.active" in out and "test-patient" in out


def test_an_unknown_profile_option_exits_2(tmp_path, capsys):
    status = main(["validate", str(write(tmp_path / "p.json", PATIENT)), "--profile", T + "unknown"])
    assert status == 2
    assert "not known" in capsys.readouterr().err


def test_claimed_profiles_are_checked(tmp_path, capsys):
    claimed = dict(PATIENT, active=False, meta={"profile": [T + "test-patient"]})
    status, out = run(capsys, write(tmp_path / "p.json", claimed), "--ig", FIXTURES)
    assert status == 1 and "Patient.active" in out
    status, out = run(capsys, tmp_path / "p.json", "--ig", FIXTURES, "--no-meta-profile")
    assert status == 0


def test_bundles_are_reported_entry_by_entry(tmp_path, capsys):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": PATIENT},
        {"fullUrl": "urn:uuid:2", "resource": dict(PATIENT, id="p2", active=False)}]}
    status, out = run(capsys, write(tmp_path / "b.json", bundle), "--ig", FIXTURES, "--profile", T + "test-patient")
    assert status == 1
    lines = out.splitlines()
    assert any(line.startswith(f"{tmp_path / 'b.json'}#entry[0]") and "OK" in line for line in lines)
    assert any(line.startswith(f"{tmp_path / 'b.json'}#entry[1]") and "INVALID" in line for line in lines)
    assert "Bundle.entry[1].resource.active" in out


def test_ndjson_folders_and_unreadable_json(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "a.ndjson", json.dumps(PATIENT) + "\n" + json.dumps(dict(PATIENT, id="p2")) + "\n")
    write(folder / "broken.json", "{not json")
    status, out = run(capsys, folder)
    assert status == 1
    assert "a.ndjson:1" in out and "a.ndjson:2" in out and "not readable as FHIR JSON" in out


def test_comments_and_json_output(tmp_path, capsys):
    commented = write(tmp_path / "c.json", '{"resourceType": "Patient", // a comment\n "active": true}')
    assert main(["validate", str(commented)]) == 1
    capsys.readouterr()
    status, out = run(capsys, commented, "--allow-comments", "--format", "json")
    assert status == 0
    report = json.loads(out.splitlines()[0])
    assert report["resource"] == "Patient/(no id)" and report["outcome"]["resourceType"] == "OperationOutcome"


def test_strict_makes_unknown_extensions_errors(tmp_path, capsys):
    extended = dict(PATIENT, extension=[{"url": "https://nobody.example/x", "valueString": "y"}])
    path = write(tmp_path / "e.json", extended)
    assert run(capsys, path)[0] == 0
    assert run(capsys, path, "--strict")[0] == 1


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.json")]) == 2
