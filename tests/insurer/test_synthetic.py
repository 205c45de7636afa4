"""The synthetic insurer: realistic, deterministic histories that pass the profiles, some beyond the window."""
from __future__ import annotations

import json
from collections import Counter
from datetime import date

from feed_helpers import CCAM, CIP13, NGAP, NOW

from fhir_server.carehistory import INSURER_SYSTEM
from fhir_server.carehistory.synthetic import GHM, SyntheticInsurer
from fhir_server.cli import main


def service_end(item: dict) -> str:
    return max([item.get("billablePeriod", {}).get("end", "")] +
               [i.get("servicedDate") or i["servicedPeriod"]["end"] for i in item["item"]])


def test_histories_are_plausible_and_reach_beyond_the_window():
    insurer = SyntheticInsurer(60, now=NOW)
    items = list(insurer.all_items())
    assert 20 <= len(items) / 60 <= 70  # care items per patient over 30 months
    kinds = Counter(i["type"]["coding"][0]["code"] for i in items)
    assert kinds["professional"] > kinds["institutional"] > 0 and kinds["pharmacy"] > 0
    systems = {c["system"] for i in items for line in i["item"] for c in line["productOrService"]["coding"]}
    assert systems == {NGAP, CCAM, CIP13, GHM}
    old = [i for i in items if service_end(i) < "2024-11-26"]
    assert 0.1 < len(old) / len(items) < 0.3  # about 6 of 30 months are outside the window
    assert all(date.fromisoformat(service_end(i)) < NOW.date() for i in items)
    values = [i["identifier"][0]["value"] for i in items]
    assert len(set(values)) == len(values) and items[0]["identifier"][0]["system"] == INSURER_SYSTEM


def test_the_same_seed_gives_the_same_history():
    a, b = SyntheticInsurer(3, now=NOW), SyntheticInsurer(3, now=NOW)
    assert list(a.all_items()) == list(b.all_items()) and a.patient(2) == b.patient(2)
    assert list(SyntheticInsurer(3, seed=9, now=NOW).all_items()) != list(a.all_items())


def test_patients_and_items_pass_the_profiles(engine):
    insurer = SyntheticInsurer(4, now=NOW)
    for resource in [insurer.patient(i) for i in range(4)] + list(insurer.all_items()):
        profiles = resource.get("meta", {}).get("profile") or [
            "https://dmp.example.org/fhir/StructureDefinition/dmp-patient"]
        errors = [i for i in engine.profiles.validate_all(resource, profiles) if i.severity in ("error", "fatal")]
        assert not errors, (resource.get("id") or resource["identifier"][0]["value"], errors)


def test_fhir_server_demo_writes_ndjson_and_batch_bundles(tmp_path, capsys):
    assert main(["demo", "--patients", "3", "--out", str(tmp_path), "--bundle-size", "50"]) == 0
    patients = (tmp_path / "Patient.ndjson").read_text().splitlines()
    items = (tmp_path / "ExplanationOfBenefit.ndjson").read_text().splitlines()
    bundles = sorted((tmp_path / "bundles").glob("batch-*.json"))
    assert len(patients) == 3 and len(bundles) == -(-len(items) // 50)
    first = json.loads(bundles[0].read_text())
    assert first["type"] == "batch" and first["entry"][0]["request"]["method"] == "PUT"
    assert first["entry"][0]["request"]["url"].startswith(f"ExplanationOfBenefit?identifier={INSURER_SYSTEM}|")
    assert f"3 patients, {len(items)} care items" in capsys.readouterr().out
