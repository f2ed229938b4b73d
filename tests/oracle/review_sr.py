"""A reviewer's SR, written with pydicom (independently of Vigie), in the
pattern docs/results.md documents ("Reviews sent as DICOM SR"):
Comprehensive SR, TID 1500 root (126000, DCM), the person observer
(121008, DCM) in the observer context, the verdict as
(AIRESULTASSESS, 99VIGIE) = ACCEPT | REJECT | CORRECT, the corrected finding
as TEXT (AICORRECTED, 99VIGIE), a comment as TEXT (121106, DCM), and the
reviewed AI result in the Current Requested Procedure Evidence Sequence
and a COMPOSITE item.

usage: review_sr.py AI_RESULT.dcm OUT.dcm VERDICT_CODE OBSERVER [CORRECTED] [COMMENT]
       (VERDICT_CODE: ACCEPT, REJECT, CORRECT, or anything else to test a
       refusal; AI_RESULT may be any DICOM file: its UIDs are referenced)
"""

import sys

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def code(value, scheme, meaning):
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def content(relationship, value_type, concept):
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    return item


def main():
    source_path, out, verdict = sys.argv[1], sys.argv[2], sys.argv[3]
    observer = sys.argv[4]
    corrected = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None
    comment = sys.argv[6] if len(sys.argv) > 6 else None
    ai = pydicom.dcmread(source_path)

    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                    "AccessionNumber", "ReferringPhysicianName"):
        ds.__setattr__(keyword, getattr(ai, keyword, ""))
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesNumber = 9001
    ds.InstanceNumber = 1
    ds.Manufacturer = "review_sr.py (test peer)"
    ds.ContentDate = "20261202"
    ds.ContentTime = "120000"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([code("126000", "DCM", "Imaging Measurement Report")])
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "1500"
    ds.ContentTemplateSequence = Sequence([template])

    reference = Dataset()
    reference.ReferencedSOPClassUID = ai.SOPClassUID
    reference.ReferencedSOPInstanceUID = ai.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = ai.SeriesInstanceUID
    series.ReferencedSOPSequence = Sequence([reference])
    study = Dataset()
    study.StudyInstanceUID = ai.StudyInstanceUID
    study.ReferencedSeriesSequence = Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])

    items = []
    observer_type = content("HAS OBS CONTEXT", "CODE", code("121005", "DCM", "Observer Type"))
    observer_type.ConceptCodeSequence = Sequence([code("121006", "DCM", "Person")])
    items.append(observer_type)
    name = content("HAS OBS CONTEXT", "PNAME", code("121008", "DCM", "Person Observer Name"))
    name.PersonName = observer
    items.append(name)
    assessed = content("CONTAINS", "COMPOSITE", code("AIRESULT", "99VIGIE", "Assessed AI result"))
    composite = Dataset()
    composite.ReferencedSOPClassUID = ai.SOPClassUID
    composite.ReferencedSOPInstanceUID = ai.SOPInstanceUID
    assessed.ReferencedSOPSequence = Sequence([composite])
    items.append(assessed)
    meanings = {"ACCEPT": "AI result accepted", "REJECT": "AI result rejected",
                "CORRECT": "AI result corrected"}
    assessment = content("CONTAINS", "CODE", code("AIRESULTASSESS", "99VIGIE", "AI result assessment"))
    assessment.ConceptCodeSequence = Sequence([code(verdict, "99VIGIE", meanings.get(verdict, "other"))])
    items.append(assessment)
    if corrected:
        finding = content("CONTAINS", "TEXT", code("AICORRECTED", "99VIGIE", "Corrected finding"))
        finding.TextValue = corrected
        items.append(finding)
    if comment:
        note = content("CONTAINS", "TEXT", code("121106", "DCM", "Comment"))
        note.TextValue = comment
        items.append(note)
    ds.ContentSequence = Sequence(items)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)
    print(ds.SOPInstanceUID)


main()
