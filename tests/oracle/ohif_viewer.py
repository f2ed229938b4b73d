"""Drive OHIF (npm @ohif/app, its prebuilt dist/) in Debian's headless
Chromium, over the DevTools protocol (the `Browser` of review_page.py),
against Vigie's DICOMweb behind the same-origin reverse proxy: the study
list, a study with its image, and the AI result (Vigie's summary image),
with screenshots. The pixels OHIF drew are read from its canvas and
compared with the stored instances (numpy).

usage: ohif_viewer.py OHIF_URL USER:PASSWORD SHOTS_DIR STUDY STUDY_DESCRIPTION
                      SUMMARY_SERIES_NUMBER SOURCE_FILE SUMMARY_FILE
(the proxy's basic authentication, sent with every request the page makes).
The study list must show the study (by its description); the study opens at
the viewer URL the list's workflows open; the summary image is opened from
the study browser by a double-click on its thumbnail.
Prints a JSON object of what was seen and measured.
"""

import base64
import io
import json
import os
import signal
import sys
import time

import numpy as np
import pydicom
from PIL import Image

from review_page import Browser


def canvas_pixels(browser):
    """The viewport's canvas as a grey numpy array (None if absent)."""
    data = browser.evaluate(
        "(() => { const c = document.querySelector('canvas.cornerstone-canvas');"
        " return c ? c.toDataURL('image/png') : null; })()")
    if not data:
        return None
    raw = base64.b64decode(data.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("L")).astype(np.float64)


def drawn(pixels):
    """The part of the canvas OHIF drew the image into (not background)."""
    rows = np.where(pixels.max(axis=1) > 8)[0]
    cols = np.where(pixels.max(axis=0) > 8)[0]
    if len(rows) == 0 or len(cols) == 0:
        return None
    return pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def reference(path):
    """The stored instance as a viewer shows it: Modality LUT, the file's
    first window or min-max, 0–255."""
    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float64)
    if a.ndim == 3 and a.shape[-1] == 3:
        a = a.mean(axis=-1)
    a = a * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if "WindowCenter" in ds:
        c = ds.WindowCenter
        w = ds.WindowWidth
        c = float(c[0] if isinstance(c, pydicom.multival.MultiValue) else c)
        w = float(w[0] if isinstance(w, pydicom.multival.MultiValue) else w)
        lo, hi = c - w / 2, c + w / 2
    else:
        lo, hi = a.min(), a.max()
    return np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1) * 255


def fitted(pixels, shape):
    """The region of the canvas where a viewer fitting an image of `shape`
    (rows, columns) into it, centred, draws it."""
    height, width = pixels.shape
    rows, columns = shape
    scale = min(width / columns, height / rows)
    w, h = columns * scale, rows * scale
    x0, y0 = (width - w) / 2, (height - h) / 2
    return pixels[int(round(y0)):int(round(y0 + h)), int(round(x0)):int(round(x0 + w))]


def compared(pixels, expected):
    """What the canvas shows where the image is fitted, resized to the
    instance, against the instance: Pearson correlation and mean absolute
    difference in grey levels (a wrong window shows in the second)."""
    if pixels is None:
        return None, None
    shown = fitted(pixels, expected.shape)
    image = Image.fromarray(shown.astype(np.uint8)).resize(
        (expected.shape[1], expected.shape[0]), Image.BILINEAR)
    a = np.asarray(image).astype(np.float64).ravel()
    b = expected.ravel()
    mad = float(np.abs(a - b).mean())
    if a.std() == 0 or b.std() == 0:
        return 0.0, mad
    return float(np.corrcoef(a, b)[0, 1]), mad


def wait_for_image(browser, what, timeout=90):
    """Until the canvas holds a drawn image that stays the same."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        pixels = canvas_pixels(browser)
        if pixels is not None and drawn(pixels) is not None:
            if last is not None and last.shape == pixels.shape and np.array_equal(last, pixels):
                return pixels
            last = pixels
        time.sleep(1.0)
    raise RuntimeError(f"timed out waiting for {what}: {browser.evaluate('document.body.innerText')[:500]!r}")


def dismiss(browser):
    """Close OHIF's notices (the investigational-use banner, the tour), so
    that the screenshots show the viewport."""
    browser.evaluate(
        "(() => { for (const b of document.querySelectorAll('button')) {"
        " const t = b.innerText.trim();"
        " if (t === 'Confirm and hide' || t === 'Skip all') b.click(); } })()")
    time.sleep(0.5)


def main():
    signal.alarm(300)  # never hang the test run
    (url, credentials, shots, study, description, summary_series_number, source,
     summary) = sys.argv[1:9]
    os.makedirs(shots, exist_ok=True)
    seen = {}
    browser = Browser(extra_args=("--ignore-certificate-errors",))
    try:
        browser.attach()
        browser.send("Page.enable")
        browser.send("Runtime.enable")
        browser.send("Network.enable")
        browser.send("Network.setExtraHTTPHeaders", {"headers": {
            "Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}})
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1300, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        # 1. The study list, as a radiologist opens the viewer.
        browser.send("Page.navigate", {"url": f"{url}/"})
        browser.wait(f"document.body && document.body.innerText.includes({json.dumps(description)})",
                     "the study list", timeout=90)
        dismiss(browser)
        browser.screenshot(os.path.join(shots, "1-study-list.png"))
        seen["study_list_text"] = browser.evaluate("document.body.innerText")[:4000]

        # 2. The study opened in OHIF's viewer, at the URL the list's
        # workflow opens (/viewer?StudyInstanceUIDs=…): its first series.
        browser.send("Page.navigate", {"url": f"{url}/viewer?StudyInstanceUIDs={study}"})
        browser.wait("location.pathname.startsWith('/viewer')", "the viewer", timeout=60)
        pixels = wait_for_image(browser, "the study's image")
        dismiss(browser)
        browser.screenshot(os.path.join(shots, "2-image.png"))
        seen["viewer_url"] = browser.evaluate("location.pathname + location.search")
        seen["image_correlation"], seen["image_mad"] = compared(pixels, reference(source))
        seen["viewer_text"] = browser.evaluate("document.body.innerText")[:4000]

        # 3. The AI result: the summary image's thumbnail in the study
        # browser, double-clicked into the viewport.
        selector = (f'[data-cy="study-browser-thumbnail"]'
                    f'[data-series="{summary_series_number}"]')
        browser.wait(f"!!document.querySelector({json.dumps(selector)})",
                     "the summary image's thumbnail", timeout=60)
        # OHIF's thumbnails are drag sources: a double-click is given to
        # the element as the DOM event its handler listens to.
        browser.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'});"
            " e.dispatchEvent(new MouseEvent('dblclick', {bubbles: true, cancelable: true,"
            " view: window, detail: 2})); })()")
        expected = reference(summary)
        deadline = time.time() + 60
        while True:
            pixels = wait_for_image(browser, "the AI summary image")
            correlation, mad = compared(pixels, expected)
            if correlation and correlation > 0.9 or time.time() > deadline:
                break
            time.sleep(1)
        dismiss(browser)
        browser.screenshot(os.path.join(shots, "3-ai-result.png"))
        seen["summary_correlation"], seen["summary_mad"] = correlation, mad
        seen["summary_vs_source_correlation"], _ = compared(pixels, reference(source))
        seen["summary_text"] = browser.evaluate("document.body.innerText")[:4000]
    finally:
        browser.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
