"""Test oracle: parse RFC 5424 syslog messages carrying DICOM PS3.15 audit
messages (XML), as an audit repository would.

Usage: parse_syslog_audit.py FILE   (FILE: a JSON list of message strings)
Prints a JSON list, one object per message: pri, version, app, msgid,
event_id, action, outcome, event_type, record (the Vigie record number),
study (ParticipantObjectID of the study, if any). Messages with MSGID
`vigie-checkpoint` carry a signed checkpoint as JSON instead: for them the
object has pri, version, app, msgid and checkpoint.
"""
import json
import re
import sys
import xml.etree.ElementTree as ET

HEADER = re.compile(
    r"^<(?P<pri>\d{1,3})>(?P<version>1) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|\[.*?\]) \ufeff(?P<msg>.*)$",
    re.S,
)


def parse(message: str) -> dict:
    m = HEADER.match(message)
    if not m:
        raise ValueError(f"not RFC 5424: {message[:80]!r}")
    if m["msgid"] == "vigie-checkpoint":
        return {
            "pri": int(m["pri"]),
            "version": m["version"],
            "app": m["app"],
            "msgid": m["msgid"],
            "checkpoint": json.loads(m["msg"]),
        }
    root = ET.fromstring(m["msg"].encode("utf-8"))
    if root.tag != "AuditMessage":
        raise ValueError(root.tag)
    ev = root.find("EventIdentification")
    event_id = ev.find("EventID")
    event_type = ev.find("EventTypeCode")
    record = None
    study = None
    for obj in root.findall("ParticipantObjectIdentification"):
        code = obj.find("ParticipantObjectIDTypeCode").get("csd-code")
        if code == "vigie-audit-record":
            record = int(obj.get("ParticipantObjectID"))
        elif code == "110180":
            study = obj.get("ParticipantObjectID")
    if root.find("AuditSourceIdentification") is None or not root.findall("ActiveParticipant"):
        raise ValueError("missing AuditSourceIdentification or ActiveParticipant")
    return {
        "pri": int(m["pri"]),
        "version": m["version"],
        "app": m["app"],
        "msgid": m["msgid"],
        "event_id": event_id.get("csd-code"),
        "action": ev.get("EventActionCode"),
        "outcome": ev.get("EventOutcomeIndicator"),
        "event_type": event_type.get("csd-code") if event_type is not None else None,
        "record": record,
        "study": study,
    }


with open(sys.argv[1], encoding="utf-8") as f:
    messages = json.load(f)
print(json.dumps([parse(m) for m in messages]))
