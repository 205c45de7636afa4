"""Validation of incoming resources against the R4 definitions (structure, bindings, invariants)."""
from fhir_server.validation.structure import StructureValidator

__all__ = ["StructureValidator"]
