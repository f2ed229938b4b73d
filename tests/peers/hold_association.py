"""Test peer (pynetdicom): one association that stores instances of one
study with pauses between them, then releases or aborts it.

Each instance is FILE with a new SOP Instance UID (FILE's, then ".<k>"),
so that several instances of FILE's study and series go in.

Usage: hold_association.py HOST PORT FILE --first K --count N
           [--pause S] [--hold S] [--abort] [--calling AET] [--called AET]
Prints one line per instance: the status of its C-STORE-RSP (hex), and
"released" or "aborted" at the end. Exit status 1 when association or a
store fails.
"""
import argparse
import sys
import time

import pydicom
from pynetdicom import AE

parser = argparse.ArgumentParser()
parser.add_argument("host")
parser.add_argument("port", type=int)
parser.add_argument("file")
parser.add_argument("--first", type=int, default=1)
parser.add_argument("--count", type=int, default=1)
parser.add_argument("--pause", type=float, default=0.0)
parser.add_argument("--hold", type=float, default=0.0,
                    help="seconds to keep the association open after the last store")
parser.add_argument("--abort", action="store_true")
parser.add_argument("--calling", default="HOLDER")
parser.add_argument("--called", default="VIGIE")
args = parser.parse_args()

template = pydicom.dcmread(args.file)
ae = AE(ae_title=args.calling)
ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
assoc = ae.associate(args.host, args.port, ae_title=args.called)
if not assoc.is_established:
    print("association failed", flush=True)
    sys.exit(1)
failed = False
for k in range(args.first, args.first + args.count):
    if k > args.first and args.pause:
        time.sleep(args.pause)
    ds = pydicom.dcmread(args.file)
    ds.SOPInstanceUID = f"{template.SOPInstanceUID}.{k}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    status = assoc.send_c_store(ds)
    code = getattr(status, "Status", None)
    print(f"{code:04X}" if code is not None else "no answer", flush=True)
    failed |= code != 0
if args.hold:
    print("holding", flush=True)
    time.sleep(args.hold)
if args.abort:
    assoc.abort()
    print("aborted", flush=True)
else:
    assoc.release()
    print("released", flush=True)
sys.exit(1 if failed else 0)
