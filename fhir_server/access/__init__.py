"""The single access gate: who may do what on which part of the record."""
