"""Drive Vigie's review page in a real headless Chromium (Debian's), over
the DevTools protocol on a pipe (no driver, no extra package): sign in
with a token, wait for the worklist and the job's thumbnail, take a
screenshot, choose the corrected label, click "Correct to" with real mouse
events, wait for the page to say the review was recorded, take another
screenshot.

usage: review_page.py URL TOKEN REVIEWER JOB_ID LABEL SHOTS_DIR
Prints a JSON object: the status line the page shows, the thumbnail's
natural size, the labels offered.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


class Browser:
    def __init__(self, extra_args=()):
        self.profile = tempfile.mkdtemp(prefix="vigie-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        # Chromium reads commands on fd 3 and writes answers on fd 4: the
        # shell moves the pipe's ends there (through 98 and 99, so that the
        # moves cannot overwrite each other).
        script = ('exec 98<&"$1" 99>&"$2"; eval "exec $1<&- $2>&-"; '
                  'exec 3<&98 4>&99 98<&- 99>&-; shift 2; exec chromium "$@"')
        self.process = subprocess.Popen(
            ["bash", "-c", script, "bash", str(to_chrome_r), str(from_chrome_w),
             "--headless", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-pipe", "--no-first-run", "--hide-scrollbars",
             "--window-size=1300,900", f"--user-data-dir={self.profile}",
             *extra_args, "about:blank"],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.next_id = 0
        self.buffer = b""
        self.session = None

    def send(self, method, params=None, session=True):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self.read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def read(self):
        while b"\0" not in self.buffer:
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def attach(self):
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": page["targetId"], "flatten": True},
                                 session=False)["sessionId"]

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate",
                           {"expression": expression, "returnByValue": True,
                            "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression, what, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}")

    def type_into(self, selector, text):
        self.click(selector)
        self.send("Input.insertText", {"text": text})

    def click(self, selector):
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent",
                      {"type": kind, "x": box[0], "y": box[1], "button": "left",
                       "clickCount": 1})

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.send("Browser.close", session=False)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def main():
    url, token, reviewer, job, label, shots = sys.argv[1:7]
    os.makedirs(shots, exist_ok=True)
    browser = Browser()
    try:
        browser.attach()
        browser.send("Page.enable")
        browser.send("Runtime.enable")
        browser.send("Page.navigate", {"url": f"{url}#job={job}"})
        browser.wait("document.readyState === 'complete' && !!document.getElementById('signin')",
                     "the page")
        browser.type_into("#token", token)
        browser.type_into("#reviewer", reviewer)
        browser.click("#signin")
        card = f"section.case[data-job='{job}']"
        browser.wait(f"!!document.querySelector(\"{card} img[data-loaded='1']\")",
                     "the job's card and thumbnail")
        browser.screenshot(os.path.join(shots, "1-worklist.png"))
        labels = browser.evaluate(
            f"[...document.querySelectorAll(\"{card} select option\")].map(o => o.value)")
        browser.evaluate(
            f"(() => {{ const s = document.querySelector(\"{card} select\");"
            f" s.value = {json.dumps(label)}; s.dispatchEvent(new Event('change')); }})()")
        browser.type_into(f"{card} textarea", "seen on the page")
        browser.click(f"{card} button.correct")
        browser.wait(f"document.querySelector(\"{card} .status\").textContent.startsWith('Recorded')"
                     f" || document.querySelector(\"{card} .status\").classList.contains('error')",
                     "the page's answer")
        browser.screenshot(os.path.join(shots, "2-recorded.png"))
        print(json.dumps({
            "status": browser.evaluate(f"document.querySelector(\"{card} .status\").textContent"),
            "thumbnail": browser.evaluate(
                f"(() => {{ const i = document.querySelector(\"{card} img\");"
                " return [i.naturalWidth, i.naturalHeight]; })()"),
            "labels": labels,
            "finding": browser.evaluate(f"document.querySelector(\"{card} .finding\").textContent"),
        }))
    finally:
        browser.close()


if __name__ == "__main__":
    main()
