"""FHIR values shared by every layer: JSON codec, OperationOutcome, dates, references."""
