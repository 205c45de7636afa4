"""The care history fed by the health insurer (issue #8, docs/adr/0006-care-history-feed.md).

Each reimbursed care item is an ``ExplanationOfBenefit`` (profile ``dmp-explanationofbenefit``)
identified by the insurer (``https://dmp.example.org/fhir/sid/insurer-care-item``). This package holds
what the feature adds to the server, wired by :mod:`fhir_server.app`:

* :mod:`.parameters`: the record's own SearchParameters (``profiles/SearchParameter-*.json``:
  ``service-date``, ``type``, ``code`` of ExplanationOfBenefit), built into the engine;
* :mod:`.window`: the 24-month window, a standing rule of the access gate, on an injectable clock;
* :mod:`.feed`: the write-side check that a care item names a Patient this server holds;
* :mod:`.purge`: the physical removal of expired items and its AuditEvent (``fhir-server purge``,
  and a periodic task in ``serve``);
* :mod:`.synthetic`: a synthetic insurer (``fhir-server demo``, tests, ``bench/insurer.py``).

Bulk ingestion (``$import``) is :mod:`fhir_server.bulk.imports`.
"""
from __future__ import annotations

INSURER_SYSTEM = "https://dmp.example.org/fhir/sid/insurer-care-item"
EOB = "ExplanationOfBenefit"
