"""Test peer (pynetdicom): a C-GET requester in the Study Root model that
takes the SCP role for the storage classes named, and may cancel.

Usage: get_scu.py HOST PORT --study UID [--classes MR,SR] [--cancel-after N]
Study UID "*" asks for every study. Prints one JSON object: the status of
each response ("statuses"), the final one's counts ("final", "completed",
"failed", "warning", "remaining"), its Failed SOP Instance UID List
("failed_uids") and the SOP Instance UIDs received ("received").
"""
import argparse
import json
import sys

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    ComprehensiveSRStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelGet as GET,
)

CLASSES = {"MR": MRImageStorage, "SR": ComprehensiveSRStorage}

parser = argparse.ArgumentParser()
parser.add_argument("host")
parser.add_argument("port", type=int)
parser.add_argument("--study", required=True)
parser.add_argument("--classes", default="MR,SR")
parser.add_argument("--cancel-after", type=int, default=0)
args = parser.parse_args()

received = []


def handle_store(event):
    received.append(str(event.request.AffectedSOPInstanceUID))
    return 0x0000


ae = AE(ae_title="GETTER")
ae.add_requested_context(GET)
roles = []
for name in args.classes.split(","):
    ae.add_requested_context(CLASSES[name])
    roles.append(build_role(CLASSES[name], scp_role=True))
assoc = ae.associate(
    args.host,
    args.port,
    ae_title="VIGIE",
    ext_neg=roles,
    evt_handlers=[(evt.EVT_C_STORE, handle_store)],
)
if not assoc.is_established:
    print(json.dumps({"error": "association failed"}))
    sys.exit(1)
query = Dataset()
query.QueryRetrieveLevel = "STUDY"
query.StudyInstanceUID = args.study
get_context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == GET)
out = {"statuses": []}
pending = 0
for status, identifier in assoc.send_c_get(query, GET, msg_id=7):
    if status is None or "Status" not in status:
        out["statuses"].append(None)
        break
    code = status.Status
    out["statuses"].append(code)
    if code in (0xFF00, 0xFF01):
        pending += 1
        if args.cancel_after and pending == args.cancel_after:
            assoc.send_c_cancel(7, get_context.context_id)
        continue
    out["final"] = code
    for key, name in [
        ("completed", "NumberOfCompletedSuboperations"),
        ("failed", "NumberOfFailedSuboperations"),
        ("warning", "NumberOfWarningSuboperations"),
        ("remaining", "NumberOfRemainingSuboperations"),
    ]:
        out[key] = int(getattr(status, name)) if name in status else None
    uids = []
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        value = identifier.FailedSOPInstanceUIDList
        uids = [str(value)] if isinstance(value, str) else [str(v) for v in value]
    out["failed_uids"] = uids
assoc.release()
out["received"] = received
print(json.dumps(out))
