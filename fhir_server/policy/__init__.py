"""The record's access rules (issue #7, docs/adr/0009-record-access-rules.md), on top of the SMART gate.

SMART scopes stay the outer limit (:mod:`fhir_server.access.smart`); this package narrows what
professionals, patients and legal representatives reach, from the record's own data:

* :mod:`.codes` — the codes the rules read (consent kinds, visibility labels, purposes of use);
* :mod:`.relations` — who the acting user is to which records (authorised, treating doctor,
  blocked, emergency access, representative of a minor), found in the store once per request;
* :mod:`.gate` — :class:`RecordGate`: those relations turned into search clauses (so search,
  counts, includes, chains, ``_has``, ``$everything``, history and export obey them) and the write
  rules (authorship, label-only changes, who may write which consent);
* :mod:`.emergency` — emergency access ("bris de glace", SAMU regulation) as an explicit operation;
* :mod:`.notifications` and :mod:`.schedule` — what the patient is told, and the timed rules.
* :mod:`.trace_visibility` — a trace naming an item hidden from the patient is hidden with it.
"""


def install(app, server, jobs: bool = False) -> None:  # noqa: ANN001 (Flask app, FHIRServer)
    """Wire the record's rules into an app whose gate is a :class:`~fhir_server.policy.gate.RecordGate`:
    the notifier (after each committed write), the ``$emergency-access`` and ``$close`` operations, and
    with ``jobs`` (``serve``'s worker processes) the timed rules every ``settings.record_jobs_interval``."""
    import atexit

    from fhir_server.http.record_api import record_api
    from fhir_server.policy.gate import RecordGate
    from fhir_server.policy.notifications import Notifier
    app.register_blueprint(record_api, url_prefix="/fhir")
    if not isinstance(server.gate, RecordGate):
        return
    from auth.senders import build_sender
    notifier = Notifier(server, build_sender(server.settings))
    app.extensions["dmp-notifier"] = notifier
    server.add_write_listener(notifier.on_write)
    from fhir_server.policy.provenance import PatientEntries
    server.add_write_listener(PatientEntries(server).on_write)
    from fhir_server.policy.trace_visibility import TraceRelabeller, hiding_labels
    auditor = getattr(server, "audit", None)
    if auditor is not None:  # traces naming an item hidden from the patient are hidden with it
        auditor.builder.item_labels = hiding_labels
    server.add_write_listener(TraceRelabeller(server).on_write)
    interval = getattr(server.settings, "record_jobs_interval", 3600.0)
    if jobs and interval > 0:
        from fhir_server.policy.schedule import run_record_jobs
        from fhir_server.services.periodic import PeriodicTask
        task = PeriodicTask("record-jobs", lambda: run_record_jobs(server, notifier, server.gate.finder), interval)
        task.start()
        atexit.register(task.stop)
