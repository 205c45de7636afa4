"""Interactions and operations, independent of HTTP."""
