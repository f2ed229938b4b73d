"""Test oracle: read a TID 1500 SR with highdicom (template parsing) and
pydicom (attributes), print what it found as JSON.

Usage: read_sr.py FILE...   (one JSON line per file)
"""
import json
import sys

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes


def text_of(items, code_value):
    for item in items:
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == code_value:
            return item.TextValue
    return None


def read(path):
    ds = pydicom.dcmread(path)
    sr = hd.sr.srread(path)
    report = hd.sr.MeasurementReport.from_sequence([sr])
    groups = []
    for g in report.get_image_measurement_groups():
        probabilities = g.get_measurements(name=codes.DCM.Probability)
        children = g[0].ContentSequence
        thresholds = [
            item for item in children
            if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "DECISIONTHRESH"
        ]
        decisions = [
            item for item in children
            if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "AIDECISION"
        ]
        groups.append({
            "decision": decisions[0].ConceptCodeSequence[0].CodeMeaning if decisions else None,
            "qualitative": [
                (q.name.value, q.name.scheme_designator, q.value.value, q.value.scheme_designator)
                for q in g.get_qualitative_evaluations()
            ],
            "tracking": g.tracking_identifier,
            "finding": g.finding_type.value if g.finding_type is not None else None,
            "probability": float(probabilities[0].value) if probabilities else None,
            "unit": probabilities[0].unit.value if probabilities else None,
            "algorithm": text_of(children, "111001"),
            "algorithm_version": text_of(children, "111003"),
            "source": [img.referenced_sop_instance_uid for img in g.source_images],
            "threshold": float(thresholds[0].MeasuredValueSequence[0].FloatingPointValue) if thresholds else None,
        })
    evidence = [
        sop.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]
    observer = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121005"]
    return {
        "patient_id": ds.PatientID,
        "study_instance_uid": ds.StudyInstanceUID,
        "series_description": ds.SeriesDescription,
        "template": ds.ContentTemplateSequence[0].TemplateIdentifier,
        "observer_type": observer[0].ConceptCodeSequence[0].CodeValue,
        "evidence": evidence,
        "groups": groups,
        "review_link": text_of(ds.ContentSequence, "REVIEWLINK"),
        "coding_schemes": [
            {
                "designator": c.CodingSchemeDesignator,
                "name": getattr(c, "CodingSchemeName", None),
                "organization": getattr(c, "CodingSchemeResponsibleOrganization", None),
            }
            for c in getattr(ds, "CodingSchemeIdentificationSequence", [])
        ],
    }


for path in sys.argv[1:]:
    print(json.dumps(read(path)))
