"""Date search through the REST API: the nine prefixes on the ranges that precision implies, on
dateTime, date, Period (open ends) and instant values, time zones, :missing and malformed values.

Observation "date" values of the data set, as UTC ranges:
o1 2021-03-04T10:00:00Z (one second)       o5 instant 2021-03-05T08:30:00.250Z (one millisecond)
o2 Period 2021-03-01 .. 2021-03-10 (days)  o6 none
o3 2020-12-31 (one day)                    o7 2021-03-04T12:00:00+02:00 = 10:00:00Z, like o1
o4 2022 (the whole year)
"""
from __future__ import annotations


import pytest

from search_api_data import error, ids


@pytest.mark.parametrize("query, expected", [
    ("date=2021-03-04", {"o1", "o7"}),  # eq: the day contains the value; o2's period is wider
    ("date=eq2021-03-04", {"o1", "o7"}),
    ("date=2021-03", {"o1", "o2", "o5", "o7"}),
    ("date=2021", {"o1", "o2", "o5", "o7"}),
    ("date=2022-06", set()),  # o4 (the whole of 2022) is not within June
    ("date=ne2021", {"o3", "o4"}),  # resources without a date do not match ne
    ("date=gt2021-03-04", {"o2", "o4", "o5"}),
    ("date=lt2021-03-04", {"o2", "o3"}),
    ("date=ge2021-03-04", {"o1", "o2", "o4", "o5", "o7"}),
    ("date=le2021-03-04", {"o1", "o2", "o3", "o7"}),
    ("date=sa2021-03-04", {"o4", "o5"}),
    ("date=eb2021-03-04", {"o3"}),
    ("date=ap2021-03-04", {"o1", "o2", "o3", "o5", "o7"}),  # ±10 % of the distance from now
    ("date=2021-03-04T10:00:00Z", {"o1", "o7"}),
    ("date=2021-03-04T10:00Z", {"o1", "o7"}),  # minute precision
    ("date=2021-03-04T12:00:00%2B02:00", {"o1", "o7"}),  # the same instant in another zone
    ("date=2021-03-04T10:00:01Z", set()),
    ("date=2021-03-05T08:30:00Z", {"o5"}),  # the second contains the instant's millisecond
    ("date=2021-03-05T08:30:00.250Z", {"o5"}),
    ("date=2021-03-05T08:30:00.251Z", set()),
    ("date=ge2021-03-01&date=le2021-03-31", {"o1", "o2", "o5", "o7"}),  # AND
    ("date=2020-12-31,2022", {"o3", "o4"}),  # OR
    ("date:missing=true", {"o6"}),
    ("date:missing=false", {"o1", "o2", "o3", "o4", "o5", "o7"}),
])
def test_observation_date(dataset, query, expected):
    assert ids(dataset, "Observation?" + query) == expected


@pytest.mark.parametrize("query, expected", [
    ("birthdate=1980-04-12", {"p1"}),
    ("birthdate=1975", {"p2"}),  # stored with month precision: 1975-11 is within 1975
    ("birthdate=1975-11-15", set()),  # a day does not contain the whole month
    ("birthdate=lt1980", {"p2"}),
    ("birthdate=gt1980-04", {"p3"}),
    ("birthdate=ge1980-04-12", {"p1", "p3"}),
    ("birthdate=le1975-11-15", {"p2"}),  # the month starts before that day
    ("birthdate:missing=true", {"p4"}),
])
def test_patient_birthdate(dataset, query, expected):
    assert ids(dataset, "Patient?" + query) == expected


@pytest.mark.parametrize("query, expected", [
    ("date=2021-03-04", {"e1"}),
    ("date=2021", {"e1"}),  # e2 has no end: not within 2021
    ("date=gt2030", {"e2"}),  # ...but it overlaps any later time
    ("date=lt2021-06-01", {"e1"}),
    ("date=sa2021-05", {"e2"}),
    ("date=eb2021-05", {"e1"}),
    ("date=ge2021-03-04T10:00:00Z&date=le2021-03-04T10:30:00Z", {"e1"}),
])
def test_encounter_period(dataset, query, expected):
    assert ids(dataset, "Encounter?" + query) == expected


def test_last_updated(dataset):
    assert ids(dataset, "Patient?_lastUpdated=gt2000-01-01") == {"p1", "p2", "p3", "p4"}
    assert ids(dataset, "Patient?_lastUpdated=lt2000-01-01") == set()


@pytest.mark.parametrize("query, name", [
    ("Patient?birthdate=notadate", "birthdate"),
    ("Patient?birthdate=1980-13", "birthdate"),
    ("Patient?birthdate=xx1980", "birthdate"),
    ("Observation?date=ge", "date"),
    ("Patient?_lastUpdated=yesterday", "_lastUpdated"),
    ("Patient?birthdate:missing=maybe", "birthdate:missing"),
])
def test_malformed_dates_are_400_naming_the_parameter(dataset, query, name):
    outcome = error(dataset, query)
    assert name in outcome["issue"][0]["expression"]
    assert name.split(":")[0] in outcome["issue"][0]["diagnostics"]


def test_malformed_value_is_400_even_in_lenient_mode(dataset):
    error(dataset, "Patient?birthdate=notadate", Prefer="handling=lenient")
