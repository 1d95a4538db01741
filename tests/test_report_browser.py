"""The HTML report in a real browser: headless Chromium (Debian's `chromium`) renders it, every
image decodes, and no link is broken. Driven over the DevTools protocol."""

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.test_reports import _quant_record

pytestmark = pytest.mark.slow

_CHECK = """(() => ({
  images: Array.from(document.images).map(i => ({ok: i.complete && i.naturalWidth > 0, alt: i.alt})),
  links: Array.from(document.links).map(a => a.getAttribute('href')),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  height: document.body.scrollHeight,
}))()"""


def _devtools(browser: str, url: str) -> dict:
    websocket = pytest.importorskip("websocket")
    proc = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                             "--user-data-dir=" + str(Path(url[7:]).parent / "profile"), "about:blank"],
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if m := re.search(r"DevTools listening on (ws://\S+)", line):
                break
        else:
            raise AssertionError("chromium did not start its DevTools endpoint")
        port = m.group(1).split(":")[2].split("/")[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=30) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)

        def call(i: int, method: str, **params) -> dict:
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == i:
                    return msg["result"]

        call(1, "Page.enable")
        call(2, "Page.navigate", url=url)
        while json.loads(ws.recv()).get("method") != "Page.loadEventFired":
            pass
        out = call(3, "Runtime.evaluate", expression=_CHECK, returnByValue=True)
        ws.close()
        return out["result"]["value"]
    finally:
        proc.kill()
        proc.wait()


def test_report_renders_in_headless_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (scripts/system-deps.sh installs it for ./suite slow)")
    from cli.parts import report_modules
    from core.records import write_record
    from reports.summary import write_summary

    results = tmp_path / "results"
    for seed in range(2):
        for method, top1 in (("rtn", 0.80), ("pfcr", 0.88)):
            write_record(_quant_record(method, (3, 3), seed, top1, 0.05), results)
    write_summary(results, tmp_path / "report", report_modules())
    page = _devtools(browser, (tmp_path / "report" / "report.html").as_uri())
    assert page["images"] and all(i["ok"] for i in page["images"]), page["images"]
    assert page["height"] > 500  # rendered, not an empty page
    for href in page["links"]:
        assert href[1:] in page["ids"] if href.startswith("#") else (tmp_path / "report" / href).is_file(), href
