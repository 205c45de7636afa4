"""The codes the record's rules read and write: one place, named as the French code systems name them."""
from __future__ import annotations

# document visibility (TRE_A07 StatutVisibiliteDocument): in meta.security, and in
# DocumentReference.securityLabel for documents
VISIBILITY = "https://mos.esante.gouv.fr/NOS/TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument"
MASKED_FROM_PROFESSIONALS = "MASQUE_PS"
INVISIBLE_TO_PATIENT = "INVISIBLE_PATIENT"
INVISIBLE_TO_REPRESENTATIVES = "INVISIBLE_REPRESENTANTS_LEGAUX"
VISIBILITY_CODES = (MASKED_FROM_PROFESSIONALS, INVISIBLE_TO_PATIENT, INVISIBLE_TO_REPRESENTATIVES)

# the kinds of Consent the record holds (profiles/CodeSystem-dmp-consent-kind.json)
CONSENT_KIND = "https://dmp.example.org/fhir/CodeSystem/dmp-consent-kind"
RECORD_CREATION = "CREATION_DMP"
AUTHORISATION = "AUTORISATION_ACCES"
TREATING_DOCTOR_RIGHTS = "DROITS_MEDECIN_TRAITANT"
BLOCK = "BLOCAGE_PS"
OPPOSE_EMERGENCY = "OPPOSITION_BRIS_DE_GLACE"
OPPOSE_REGULATION = "OPPOSITION_CENTRE_REGULATION"
ADVANCE_DIRECTIVES = "DIRECTIVES_ANTICIPEES"
#: kinds only the patient (or a representative) may write; a professional may declare an authorisation
#: for themself (the patient is notified) and collect the record-creation consent
PATIENT_ONLY_KINDS = frozenset({TREATING_DOCTOR_RIGHTS, BLOCK, OPPOSE_EMERGENCY, OPPOSE_REGULATION})

# purposes of use (AuditEvent.purposeOfEvent)
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BREAK_THE_GLASS = "BTG"
DMP_PURPOSE = "https://dmp.example.org/fhir/CodeSystem/dmp-purpose-of-use"
REGULATION = "CENTRE_REGULATION"

# the server-managed tag naming who wrote an item first (Practitioner/x, Patient/x, RelatedPerson/x)
AUTHOR_TAG = "https://dmp.example.org/fhir/CodeSystem/dmp-author"

# care-team role of the treating doctor (TRE_R259-HL7ParticipationFunction / v3 ParticipationFunction)
TREATING_ROLE = "PCP"

# documents: the archive flag (PDSm) and the codes patients use for what they add
ARCHIVED_EXTENSION = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-archived"
PATIENT_DOCUMENT_CLASS = "90"
ADVANCE_DIRECTIVES_DOCUMENT = "EXPPAT_3"

# emergency access: the SMART scopes a client asks for at token time, and the modes they allow
EMERGENCY_SCOPES = {"emergency-access": "bris-de-glace", "emergency-regulation": "centre-regulation"}
EMERGENCY_PURPOSE = {"bris-de-glace": (ACT_REASON, BREAK_THE_GLASS), "centre-regulation": (DMP_PURPOSE, REGULATION)}
EMERGENCY_OPPOSITION = {"bris-de-glace": OPPOSE_EMERGENCY, "centre-regulation": OPPOSE_REGULATION}
EMERGENCY_SUBTYPE = "https://dmp.example.org/fhir/CodeSystem/dmp-audit-subtype"  # code: the mode


def codes_of(concepts: object, system: str) -> set[str]:
    """The codes of ``system`` in a Coding, a CodeableConcept, or a list of either."""
    out: set[str] = set()
    items = concepts if isinstance(concepts, list) else [concepts]
    for item in items:
        if not isinstance(item, dict):
            continue
        for coding in item.get("coding", [item]):
            if isinstance(coding, dict) and coding.get("system") == system and isinstance(coding.get("code"), str):
                out.add(coding["code"])
    return out


def labels_of(resource: dict) -> set[str]:
    """The visibility codes on an item: meta.security, plus securityLabel for documents."""
    labels = codes_of((resource.get("meta") or {}).get("security", []), VISIBILITY)
    if resource.get("resourceType") == "DocumentReference":
        labels |= codes_of(resource.get("securityLabel", []), VISIBILITY)
    return labels


def author_of(resource: dict) -> str | None:
    """The server-managed author tag of a stored item (None for items written without a user)."""
    for tag in (resource.get("meta") or {}).get("tag", []):
        if isinstance(tag, dict) and tag.get("system") == AUTHOR_TAG:
            return tag.get("code")
    return None


def consent_kind(consent: dict) -> str | None:
    kinds = codes_of(consent.get("category", []), CONSENT_KIND)
    return next(iter(sorted(kinds)), None)
