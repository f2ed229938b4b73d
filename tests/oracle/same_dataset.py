"""Compare the data sets of two DICOM files with pydicom (the file meta
group and trailing padding excluded). Prints JSON: {"same": bool, "transfer_syntaxes": [a, b],
"differences": [...]} (first differing keywords)."""
import json
import sys

import pydicom


def main() -> None:
    a, b = (pydicom.dcmread(p, force=True) for p in sys.argv[1:3])
    differences = []
    # Data Set Trailing Padding (FFFC,FFFC) may be dropped by any sender
    # (PS3.5 7.7; DCMTK does); it carries no information.
    tags = sorted((set(a.keys()) | set(b.keys())) - {0xFFFCFFFC})
    for tag in tags:
        ea, eb = a.get(tag), b.get(tag)
        if ea is None or eb is None or ea.value != eb.value:
            differences.append(str(tag))
    ts = [str(x.file_meta.TransferSyntaxUID) for x in (a, b)]
    print(json.dumps({"same": not differences, "transfer_syntaxes": ts,
                      "differences": differences[:10]}))


if __name__ == "__main__":
    main()
