"""Oracle: WADO-RS frames, bulk data and rendered images of Vigie, read
with the `dicomweb-client` package (PyPI) and checked against pydicom's
reading of the files that were stored (numpy for the rendering).

Usage:
  dicomweb_frames.py URL TOKEN FILE...

For each file (already stored in Vigie), prints one JSON object per check:
{"file", "check", "ok", "detail"}, as a JSON list.
"""
import io
import json
import sys

import numpy as np
import pydicom
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.encaps import generate_frames

OCTET = "application/octet-stream"
RESULTS = []


def check(name, check_name, ok, detail=""):
    RESULTS.append({"file": name, "check": check_name, "ok": bool(ok), "detail": str(detail)[:300]})


def uids(ds):
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def native_frame(ds, index):
    """Frame `index` (from 0) of a native data set, as WADO-RS sends it."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    data = ds.PixelData
    length = len(data) // frames if ds.BitsAllocated != 1 else None
    if length is None:
        bits = ds.Rows * ds.Columns * ds.SamplesPerPixel
        bitstream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return np.packbits(bitstream[index * bits:(index + 1) * bits], bitorder="little").tobytes()
    length = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    return bytes(data[index * length:(index + 1) * length])


def decoded_frame(ds, index):
    """Frame `index` decoded by pydicom, little endian, interleaved."""
    array = ds.pixel_array
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        array = array[index]
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def expected_render(ds, index, window=None):
    """What a rendered frame must show: Modality LUT, then the window
    (given, the file's first, else the frame's min-max), linear, 8 bits."""
    array = ds.pixel_array.astype(np.float64)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        array = array[index]
    if ds.PhotometricInterpretation == "RGB":
        return np.round(array / (2 ** ds.BitsStored - 1) * 255).astype(np.uint8)
    array = array * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if window is None and "WindowCenter" in ds:
        c = ds.WindowCenter
        w = ds.WindowWidth
        c = float(c[0] if isinstance(c, pydicom.multival.MultiValue) else c)
        w = float(w[0] if isinstance(w, pydicom.multival.MultiValue) else w)
        window = (c, w)
    if window is None:
        lo, hi = array.min(), array.max()
        out = (array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)
    else:
        c, w = window
        out = np.where(
            array <= c - 0.5 - (w - 1) / 2,
            0.0,
            np.where(array > c - 0.5 + (w - 1) / 2, 1.0, (array - (c - 0.5)) / (w - 1) + 0.5),
        )
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def compare_image(name, label, png_bytes, expected):
    image = np.asarray(Image.open(io.BytesIO(png_bytes)))
    if image.shape != expected.shape:
        check(name, label, False, f"shape {image.shape} != {expected.shape}")
        return
    diff = np.abs(image.astype(int) - expected.astype(int)).max()
    check(name, label, diff <= 1, f"largest difference {diff}")


def reached(uri, url):
    """A BulkDataURI as the test reaches it: dicomweb-client sends `Host`
    without the port (web.py sets `headers['Host'] = self.host`), and
    Vigie builds its URIs from `Host`, so the port is put back."""
    from urllib.parse import urlsplit, urlunsplit

    ours = urlsplit(url)
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, ours.netloc, parts.path, parts.query, parts.fragment))


def main():
    url, token, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    client = DICOMwebClient(url=url, headers={"Authorization": f"Bearer {token}"})
    for path in files:
        name = path.rsplit("/", 1)[-1]
        ds = pydicom.dcmread(path)
        st, se, sop = uids(ds)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        syntax = ds.file_meta.TransferSyntaxUID
        last = frames - 1
        got = client.retrieve_instance_frames(st, se, sop, [frames], media_types=((OCTET, "1.2.840.10008.1.2.1"),))
        expected = native_frame(ds, last) if not syntax.is_compressed else decoded_frame(ds, last)
        check(name, "uncompressed frame", len(got) == 1 and got[0] == expected,
              f"{len(got[0]) if got else 0} bytes, {len(expected)} expected")
        if syntax.is_compressed:
            got = client.retrieve_instance_frames(st, se, sop, [frames], media_types=((OCTET, "*"),))
            stored = list(generate_frames(ds.PixelData, number_of_frames=frames))[last]
            # Both sides keep the fragments as stored, padding included.
            ok = len(got) == 1 and got[0] == stored
            check(name, "frame as stored", ok, f"{len(got[0]) if got else 0} bytes, {len(stored)} expected")
        metadata = client.retrieve_instance_metadata(st, se, sop)
        pixel = metadata.get("7FE00010", {})
        check(name, "pixel data bulk data URI", "BulkDataURI" in pixel, json.dumps(pixel))
        if "BulkDataURI" in pixel and not syntax.is_compressed:
            got = client.retrieve_bulkdata(reached(pixel["BulkDataURI"], url))
            check(name, "pixel data bulk data", len(got) == 1 and got[0] == bytes(ds.PixelData),
                  f"{len(got[0]) if got else 0} bytes")
        inline = [k for k, v in metadata.items() if "InlineBinary" in v]
        check(name, "no inline binary", not inline, inline)
        for key, element in metadata.items():
            if "BulkDataURI" in element and key != "7FE00010":
                tag = int(key, 16)
                got = client.retrieve_bulkdata(reached(element["BulkDataURI"], url))
                want = bytes(ds[tag].value)
                check(name, f"bulk data {key}", len(got) == 1 and got[0] == want,
                      f"{len(got[0]) if got else 0} bytes, {len(want)} expected")
        if ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2", "RGB"):
            png = client.retrieve_instance_frames_rendered(st, se, sop, [frames], media_types=("image/png",))
            compare_image(name, "rendered frame", png, expected_render(ds, last))
            if ds.PhotometricInterpretation != "RGB":
                png = client.retrieve_instance_frames_rendered(
                    st, se, sop, [frames], media_types=("image/png",), params={"window": "100,200"})
                compare_image(name, "rendered frame, window", png, expected_render(ds, last, (100.0, 200.0)))
    print(json.dumps(RESULTS))


if __name__ == "__main__":
    main()
