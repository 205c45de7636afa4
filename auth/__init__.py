"""The SMART on FHIR authorization server (App Launch 2.x, Backend Services), built on authlib.

Not implemented yet (see the SMART issue). The resource server already routes every access
through ``fhir_server.access.gate``; without ``--insecure-no-auth`` it refuses record access.
"""
