"""Token search through the REST API: code, system|code, |code, system|, :not, :text, :of-type,
:in / :not-in against the value sets the server holds, :missing, and the identifier forms."""
from __future__ import annotations


import pytest

from search_api_data import LOINC, MRN, NIR, SNOMED, V2_0203, error, ids

GENDER_VS = "http://hl7.org/fhir/ValueSet/administrative-gender"
STATUS_VS = "http://hl7.org/fhir/ValueSet/observation-status"


@pytest.mark.parametrize("query, expected", [
    ("Patient?gender=female", {"p1", "p3"}),
    ("Patient?gender=male,other", {"p2", "p4"}),
    ("Patient?gender=FEMALE", set()),  # codes are case-sensitive
    ("Observation?code=2339-0", {"o1", "o3"}),
    (f"Observation?code={LOINC}|2339-0", {"o1", "o3"}),
    (f"Observation?code={SNOMED}|2339-0", set()),
    ("Observation?code=|2339-0", set()),  # no system: only codes without a system
    (f"Observation?code={LOINC}|", {"o1", "o2", "o3", "o4", "o5", "o7"}),  # any code of the system
    (f"Condition?code={SNOMED}|44054006,{SNOMED}|38341003", {"c1", "c2"}),
    ("Observation?status=final", {"o1", "o3", "o6", "o7"}),
    ("Observation?category=laboratory&status=final", {"o1", "o3"}),
    ("Patient?active=true", {"p1"}),
    ("Patient?active=false", {"p2"}),
    ("Patient?email=claire.martin@example.org", {"p1"}),
    ("Encounter?class=IMP", {"e2"}),
    ("Observation?_id=o1,o3,nothere", {"o1", "o3"}),
    ("Observation?_tag=http://example.org/tags|urgent", {"o1"}),
    ("Observation?_tag=urgent&code=2339-0", {"o1"}),
    ("Observation?_tag:not=urgent&code=2339-0", {"o3"}),
])
def test_code_and_system_forms(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    (f"Patient?identifier={MRN}|MRN-1", {"p1"}),
    ("Patient?identifier=MRN-2", {"p2"}),
    (f"Patient?identifier={NIR}|", {"p1", "p3"}),
    (f"Patient?identifier={NIR}|MRN-1", set()),
    ("Observation?identifier=OBS-1", {"o1"}),
    (f"Patient?identifier:of-type={V2_0203}|MR|MRN-2", {"p2"}),
    (f"Patient?identifier:of-type={V2_0203}|NI|2800412345678", {"p1"}),
    (f"Patient?identifier:of-type={V2_0203}|NI|MRN-1", set()),  # MRN-1 is not a national id
    (f"Patient?identifier:of-type={V2_0203}|NI|2010203999999", set()),  # p3's identifier has no type
    ("Patient?identifier:text=numero%20nat", {"p1"}),  # Identifier.type.text
])
def test_identifiers(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    ("Patient?gender:not=female", {"p2", "p4"}),
    ("Patient?gender:not=female,male", {"p4"}),
    ("Observation?status:not=final", {"o2", "o4", "o5"}),
    ("Observation?category:not=laboratory", {"o2", "o4", "o5", "o6", "o7"}),  # also those without category
    ("Observation?_id:not=o1,o2", {"o3", "o4", "o5", "o6", "o7"}),
])
def test_not_excludes_resources_having_the_value(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    ("Observation?code:text=glyc", {"o1"}),  # CodeableConcept.text "Glycémie", accent-insensitive
    ("Observation?code:text=GLUCOSE", {"o1", "o3"}),  # Coding.display
    ("Observation?code:text=heart", {"o2", "o5"}),
    ("Observation?code:text=note%20libre", {"o6"}),
    ("Observation?code:text=rate", set()),  # starts-with, like strings
])
def test_text_matches_display_and_text(dataset, query, expected):
    assert ids(dataset, query) == expected


@pytest.mark.parametrize("query, expected", [
    (f"Patient?gender:in={GENDER_VS}", {"p1", "p2", "p3", "p4"}),
    (f"Patient?gender:not-in={GENDER_VS}", set()),
    (f"Observation?status:in={STATUS_VS}", {"o1", "o2", "o3", "o4", "o5", "o6", "o7"}),
    (f"Observation?code:in={STATUS_VS}", set()),  # LOINC codes are not in the status value set
    (f"Observation?code:not-in={STATUS_VS}", {"o1", "o2", "o3", "o4", "o5", "o6", "o7"}),
    (f"Patient?gender:in={GENDER_VS}&gender=male", {"p2"}),
])
def test_in_and_not_in_expand_value_sets_the_server_holds(dataset, query, expected):
    assert ids(dataset, query) == expected


def test_in_with_an_unknown_value_set_is_400(dataset):
    outcome = error(dataset, "Patient?gender:in=http://example.org/ValueSet/nope")
    assert "gender:in" in outcome["issue"][0]["expression"]


@pytest.mark.parametrize("query, expected", [
    ("Observation?category:missing=true", {"o5", "o6"}),
    ("Observation?category:missing=false", {"o1", "o2", "o3", "o4", "o7"}),
    ("Patient?identifier:missing=true", {"p4"}),
    ("Patient?gender:missing=false", {"p1", "p2", "p3", "p4"}),
])
def test_missing(dataset, query, expected):
    assert ids(dataset, query) == expected
