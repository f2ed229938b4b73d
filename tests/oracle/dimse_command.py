"""Test oracle: DIMSE command sets with pydicom (Implicit VR Little Endian).

Usage: dimse_command.py decode FILE   -> prints the elements as JSON
       dimse_command.py encode FILE   -> writes a C-STORE-RSP command set
"""
import json
import sys
from io import BytesIO

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

mode, path = sys.argv[1], sys.argv[2]
if mode == "decode":
    ds = read_dataset(BytesIO(open(path, "rb").read()), is_implicit_VR=True, is_little_endian=True)
    out = {}
    for elem in ds:
        value = elem.value
        if isinstance(value, bytes):
            value = value.hex()
        out[f"{elem.tag.element:04X}"] = value if isinstance(value, (int, str)) else str(value)
    print(json.dumps(out))
else:
    ds = Dataset()
    ds.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.CommandField = 0x8001
    ds.MessageIDBeingRespondedTo = 42
    ds.CommandDataSetType = 0x0101
    ds.Status = 0xA900
    ds.ErrorComment = "mismatch"
    ds.AffectedSOPInstanceUID = "1.2.3.4.5"
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    group = Dataset()
    group.CommandGroupLength = len(body.getvalue())
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, True
    write_dataset(head, group)
    open(path, "wb").write(head.getvalue() + body.getvalue())
