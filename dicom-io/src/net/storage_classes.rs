//! The storage SOP classes the C-STORE SCP accepts by default: the image
//! storage SOP classes of PS3.4 Annex B.5 (not retired), taken from the
//! DICOM dictionary of `dicom-dictionary-std` 0.10, and the SR classes a
//! reviewer's SR comes in.

/// (UID, name) of every non-retired image storage SOP class.
pub const IMAGE_STORAGE: &[(&str, &str)] = &[
    (
        "1.2.840.10008.5.1.4.1.1.1",
        "Computed Radiography Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.1",
        "Digital X-Ray Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        "Digital X-Ray Image Storage - For Processing",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.2",
        "Digital Mammography X-Ray Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.2.1",
        "Digital Mammography X-Ray Image Storage - For Processing",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.3",
        "Digital Intra-Oral X-Ray Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.1.3.1",
        "Digital Intra-Oral X-Ray Image Storage - For Processing",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.12.1",
        "X-Ray Angiographic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.12.1.1",
        "Enhanced XA Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.12.2",
        "X-Ray Radiofluoroscopic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.12.2.1",
        "Enhanced XRF Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.128",
        "Positron Emission Tomography Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.128.1",
        "Legacy Converted Enhanced PET Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.13.1.1",
        "X-Ray 3D Angiographic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.13.1.2",
        "X-Ray 3D Craniofacial Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.13.1.3",
        "Breast Tomosynthesis Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.13.1.4",
        "Breast Projection X-Ray Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.13.1.5",
        "Breast Projection X-Ray Image Storage - For Processing",
    ),
    ("1.2.840.10008.5.1.4.1.1.130", "Enhanced PET Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.14.1",
        "Intravascular Optical Coherence Tomography Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.14.2",
        "Intravascular Optical Coherence Tomography Image Storage - For Processing",
    ),
    ("1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.2.1", "Enhanced CT Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.2.2",
        "Legacy Converted Enhanced CT Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.2.3",
        "CT Image Storage - For Processing",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.2.4",
        "Enhanced CT Image Storage - For Processing",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.2.5",
        "Legacy Converted Enhanced CT Image Storage - For Processing",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.20",
        "Nuclear Medicine Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.3.1",
        "Ultrasound Multi-frame Image Storage",
    ),
    ("1.2.840.10008.5.1.4.1.1.4", "MR Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.4.1", "Enhanced MR Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.4.3",
        "Enhanced MR Color Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.4.4",
        "Legacy Converted Enhanced MR Image Storage",
    ),
    ("1.2.840.10008.5.1.4.1.1.481.1", "RT Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.481.23",
        "Enhanced RT Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.481.24",
        "Enhanced Continuous RT Image Storage",
    ),
    ("1.2.840.10008.5.1.4.1.1.501.1", "DICOS CT Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.501.2.1",
        "DICOS Digital X-Ray Image Storage - For Presentation",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.501.2.2",
        "DICOS Digital X-Ray Image Storage - For Processing",
    ),
    ("1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage"),
    ("1.2.840.10008.5.1.4.1.1.6.2", "Enhanced US Volume Storage"),
    ("1.2.840.10008.5.1.4.1.1.6.3", "Photoacoustic Image Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.601.1",
        "Eddy Current Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.601.2",
        "Eddy Current Multi-frame Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.601.3",
        "Thermography Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.601.4",
        "Thermography Multi-frame Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7",
        "Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.1",
        "Multi-frame Single Bit Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.2",
        "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.3",
        "Multi-frame Grayscale Word Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.7.4",
        "Multi-frame True Color Secondary Capture Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.1",
        "VL Endoscopic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.1.1",
        "Video Endoscopic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.2",
        "VL Microscopic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.2.1",
        "Video Microscopic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.3",
        "VL Slide-Coordinates Microscopic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.4",
        "VL Photographic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",
        "Video Photographic Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.5.1",
        "Ophthalmic Photography 8 Bit Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.5.2",
        "Ophthalmic Photography 16 Bit Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.5.4",
        "Ophthalmic Tomography Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.5.5",
        "Wide Field Ophthalmic Photography Stereographic Projection Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.5.6",
        "Wide Field Ophthalmic Photography 3D Coordinates Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.5.7",
        "Ophthalmic Optical Coherence Tomography En Face Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.6",
        "VL Whole Slide Microscopy Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.7",
        "Dermoscopic Photography Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.8",
        "Confocal Microscopy Image Storage",
    ),
    (
        "1.2.840.10008.5.1.4.1.1.77.1.9",
        "Confocal Microscopy Tiled Pyramidal Image Storage",
    ),
];

/// (UID, name) of the SR storage classes the C-STORE SCP (and STOW-RS)
/// accept by default: a radiologist's review of a result comes back as one
/// of these (`crate::review`). An SR that is not a review is stored and
/// served, never analysed.
pub const SR_STORAGE: &[(&str, &str)] = &[
    ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR Storage"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage"),
    (
        "1.2.840.10008.5.1.4.1.1.88.34",
        "Comprehensive 3D SR Storage",
    ),
];

/// Whether `uid` is one of [`SR_STORAGE`].
pub fn is_sr(uid: &str) -> bool {
    SR_STORAGE.iter().any(|(u, _)| *u == uid)
}
