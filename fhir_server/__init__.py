"""A FHIR R4 health-record server: the French shared medical record (DMP) over standard REST.

The package is split by concern (see ``docs/adr/0001-architecture.md``):
``http`` (REST layer), ``services`` (interactions), ``validation``, ``search``,
``store`` (SQLite and MongoDB backends), ``access`` (the single access gate) and
``model`` (FHIR value helpers shared by all of them).
"""
from fhir_server.app import create_app

__all__ = ["create_app"]
__version__ = "0.1.0"
