"""Test peer (pynetdicom): a PACS that stores instances (Storage SCP) and
answers Storage Commitment requests (Push Model SCP) as a plan says, to
exercise what Orthanc's SCP does not: failures, silence, a report on the
requesting association, a forged report.

Usage: commitment_scp.py PORT VIGIE_HOST VIGIE_PORT LOG --plan fail,silent,ok
           [--aet PACS] [--vigie-aet VIGIE]

The k-th N-ACTION follows the k-th step of the plan (the last step
repeats):
- fail: the report, on the requesting association (sent from the N-ACTION
  handler, so before the N-ACTION-RSP), names every instance in the Failed
  SOP Sequence with reason 0110 (processing failure);
- silent: Success, and no report ever;
- ok: two forged reports first, on associations of their own, every
  instance committed (calling AE ROGUE from 127.0.0.1; calling AE PACS
  from 127.0.0.2, not the destination's address), then the real one, as
  PACS from 127.0.0.1, with the SCP role negotiated (SCP/SCU Role
  Selection).

- late: Success and no report now; at the next N-ACTION (a new
  transaction for the same instances), the report of this one is sent, as
  PACS on an association of its own, and the new one is left unanswered.

LOG gets one JSON object per line: {"step": ..., "transaction": ...,
"instances": n} for each N-ACTION, {"forged_status": s},
{"forged_address_status": s} and {"report_status": s} for the reports
sent on associations of their own.
"""
import argparse
import json
import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

INSTANCE = "1.2.840.10008.1.20.1.1"

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("vigie_host")
parser.add_argument("vigie_port", type=int)
parser.add_argument("log")
parser.add_argument("--plan", default="ok")
parser.add_argument("--aet", default="PACS")
parser.add_argument("--vigie-aet", default="VIGIE")
args = parser.parse_args()
plan = args.plan.split(",")
requests = []
late = []
lock = threading.Lock()


def log(entry):
    with lock, open(args.log, "a") as out:
        out.write(json.dumps(entry) + "\n")


def report(transaction, refs, failed):
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for cls, uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = cls
        item.ReferencedSOPInstanceUID = uid
        if failed:
            item.FailureReason = 0x0110
        items.append(item)
    if failed:
        ds.FailedSOPSequence = items
    else:
        ds.ReferencedSOPSequence = items
    return ds


def send_on_own_association(calling, transaction, refs, source="127.0.0.1"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scp_role=True, scu_role=False)
    assoc = ae.associate(
        args.vigie_host,
        args.vigie_port,
        ae_title=args.vigie_aet,
        ext_neg=[role],
        bind_address=(source, 0),
    )
    if not assoc.is_established:
        return -1
    status, _ = assoc.send_n_event_report(
        report(transaction, refs, False), 1, StorageCommitmentPushModel, INSTANCE
    )
    assoc.release()
    return status.Status if status is not None and "Status" in status else -2


def late_report(transaction, refs):
    time.sleep(0.3)
    log({"late_report_status": send_on_own_association(args.aet, transaction, refs)})


def later(transaction, refs):
    time.sleep(0.3)
    log({"forged_status": send_on_own_association("ROGUE", transaction, refs)})
    log({"forged_address_status": send_on_own_association(
        args.aet, transaction, refs, "127.0.0.2")})
    log({"report_status": send_on_own_association(args.aet, transaction, refs)})


def handle_store(event):
    return 0x0000


def handle_action(event):
    info = event.action_information
    refs = [
        (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
        for i in info.ReferencedSOPSequence
    ]
    with lock:
        step = plan[min(len(requests), len(plan) - 1)]
        requests.append(step)
    transaction = str(info.TransactionUID)
    log({"step": step, "transaction": transaction, "instances": len(refs)})
    with lock:
        earlier = late.pop() if late else None
    if earlier is not None:
        threading.Thread(target=late_report, args=earlier, daemon=True).start()
    if step == "late":
        with lock:
            late.append((transaction, refs))
    elif step == "fail":
        status, _ = event.assoc.send_n_event_report(
            report(transaction, refs, True), 2, StorageCommitmentPushModel, INSTANCE
        )
        log({"same_association_status": status.Status if status is not None else -2})
    elif step == "ok":
        threading.Thread(target=later, args=(transaction, refs), daemon=True).start()
    return 0x0000, None


ae = AE(ae_title=args.aet)
ae.supported_contexts = AllStoragePresentationContexts
ae.add_supported_context(StorageCommitmentPushModel)
ae.start_server(
    ("127.0.0.1", args.port),
    block=True,
    evt_handlers=[(evt.EVT_C_STORE, handle_store), (evt.EVT_N_ACTION, handle_action)],
)
