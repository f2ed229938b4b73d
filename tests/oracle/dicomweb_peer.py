"""Test peer: the `dicomweb-client` package (PyPI) as a real DICOMweb
client of Vigie.

Usage:
  dicomweb_peer.py store URL TOKEN FILE...
      STOW-RS the files (one request); print {"referenced": [...], "failed": [...]}.
  dicomweb_peer.py browse URL TOKEN
      QIDO-RS every study, its series and instances; WADO-RS retrieve
      every instance and the metadata of every series; read the SR
      results with highdicom. Print what was found as JSON.
"""
import io
import json
import sys

import highdicom as hd
import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.sr.codedict import codes


def client(url, token):
    return DICOMwebClient(url=url, headers={"Authorization": f"Bearer {token}"})


def store(url, token, files):
    datasets = [pydicom.dcmread(f) for f in files]
    response = client(url, token).store_instances(datasets=datasets)
    referenced = [
        item.ReferencedSOPInstanceUID for item in getattr(response, "ReferencedSOPSequence", [])
    ]
    failed = [
        {"sop": getattr(item, "ReferencedSOPInstanceUID", None), "reason": int(item.FailureReason)}
        for item in getattr(response, "FailedSOPSequence", [])
    ]
    return {"referenced": referenced, "failed": failed, "retrieve_url": getattr(response, "RetrieveURL", None)}


def value(obj, tag):
    element = obj.get(tag, {})
    values = element.get("Value", [])
    return values[0] if values else None


def sr_findings(ds):
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    sr = hd.sr.srread(buffer)
    report = hd.sr.MeasurementReport.from_sequence([sr])
    findings = []
    for g in report.get_image_measurement_groups():
        probabilities = g.get_measurements(name=codes.DCM.Probability)
        findings.append({
            "finding": g.finding_type.meaning if g.finding_type is not None else None,
            "probability": float(probabilities[0].value) if probabilities else None,
            "source": [img.referenced_sop_instance_uid for img in g.source_images],
        })
    return findings


def browse(url, token):
    c = client(url, token)
    out = {"studies": [], "sr": []}
    for study in c.search_for_studies(fields=["StudyDescription"]):
        study_uid = value(study, "0020000D")
        entry = {
            "study": study_uid,
            "modalities": study.get("00080061", {}).get("Value", []),
            "series_count": value(study, "00201206"),
            "instance_count": value(study, "00201208"),
            "series": [],
        }
        for series in c.search_for_series(study_instance_uid=study_uid):
            series_uid = value(series, "0020000E")
            modality = value(series, "00080060")
            instances = c.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid
            )
            metadata = c.retrieve_series_metadata(
                study_instance_uid=study_uid, series_instance_uid=series_uid
            )
            entry["series"].append({
                "series": series_uid,
                "modality": modality,
                "instances": len(instances),
                "metadata": len(metadata),
                "metadata_sop": sorted(value(m, "00080018") for m in metadata),
            })
            for instance in instances:
                sop = value(instance, "00080018")
                ds = c.retrieve_instance(
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    sop_instance_uid=sop,
                )
                assert ds.SOPInstanceUID == sop, (ds.SOPInstanceUID, sop)
                if modality == "SR":
                    out["sr"].append({"study": study_uid, "sop": sop, "findings": sr_findings(ds)})
        out["studies"].append(entry)
    return out


def main():
    command, url, token, *rest = sys.argv[1:]
    if command == "store":
        result = store(url, token, rest)
    elif command == "browse":
        result = browse(url, token)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
