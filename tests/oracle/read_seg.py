"""Test oracle: read a SEG with highdicom; write each segment's mask for the
source instance as raw uint8 (rows x columns, 0/1) to OUT_PREFIX.<n>.u8 and
print the segment descriptions as JSON.

Usage: read_seg.py FILE SOURCE_SOP_INSTANCE_UID OUT_PREFIX
"""
import json
import sys

import highdicom as hd
import numpy as np

seg = hd.seg.segread(sys.argv[1])
source_uid, prefix = sys.argv[2], sys.argv[3]
segments = []
for number in seg.segment_numbers:
    desc = seg.get_segment_description(number)
    mask = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source_uid], segment_numbers=[number], combine_segments=False
    )
    np.asarray(mask[0, :, :, 0], dtype=np.uint8).tofile(f"{prefix}.{number}.u8")
    segments.append({
        "number": int(number),
        "label": desc.segment_label,
        "category": desc.segmented_property_category.value,
        "type": desc.segmented_property_type.value,
        "algorithm": desc.algorithm_identification[0].AlgorithmName if desc.algorithm_identification else None,
    })
print(json.dumps({"type": seg.segmentation_type.value, "segments": segments}))
