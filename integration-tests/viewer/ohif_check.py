#!/usr/bin/env python3
"""Loads a study into a real OHIF Viewer and reports what the viewer makes of it.

Orthanc (own config, free loopback ports, temp dir) stores the DICOM files; a small
same-origin server in this process serves the OHIF dist with SPA fallback and proxies
/dicom-web/ to Orthanc; headless Chromium (Playwright, Debian's /usr/bin/chromium) opens the
study, double-clicks each SR thumbnail as a user would, and the runner reads OHIF's own state
(window.services: displaySetService, measurementService) plus console/page errors and
screenshots into OUT/report.json.

Why a Python front server and not Orthanc's ServeFolders: the @ohif/app dist is built with
PUBLIC_URL "/" and webpack publicPath "/", so its bundles and chunks load from the origin
root; served under /ohif/ they 404 unless the dist is rewritten, and ServeFolders cannot
answer the SPA routes (/viewer?StudyInstanceUIDs=...) with index.html. Serving the dist at
the root of our own origin, with /dicom-web proxied, needs no change to the dist.

Usage: .venv/bin/python integration-tests/viewer/ohif_check.py --out OUT PATH [PATH...]
(PATH: DICOM files or directories, searched recursively). Setup: scripts/viewer-setup.sh.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

OHIF_VERSION = "3.13.2"
DEFAULT_DIST = Path.home() / ".cache/prima-node" / f"ohif-{OHIF_VERSION}" / "dist"
PLUGIN_DIRS = [Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc")]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # OHIF renders through WebGL (cornerstone3D/vtk.js); without a GPU only SwiftShader gives
    # a WebGL context, and recent Chromium wants it asked for explicitly.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
]

APP_CONFIG = """/* Written by ohif_check.py: same-origin DICOMweb (Orthanc through the runner). */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  showErrorDetails: 'always',
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (ohif_check)',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def log(msg: str) -> None:
    print(f"[ohif_check] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_plugin(name: str) -> Path:
    for d in PLUGIN_DIRS:
        for p in sorted(d.glob(f"lib{name}.so*")):
            return p
    raise SystemExit(f"Orthanc plugin lib{name}.so not found in {PLUGIN_DIRS}; run scripts/viewer-setup.sh")


def dicom_files(paths: list[str]) -> list[Path]:
    """Part 10 files only (by the DICM preamble), so JSON and logs beside them are skipped."""
    found = []
    for p in map(Path, paths):
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            with open(f, "rb") as fh:
                head = fh.read(132)
            if len(head) == 132 and head[128:] == b"DICM":
                found.append(f)
    return found


class Orthanc:
    def __init__(self, work: Path):
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.work = work
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = {
            "Name": "OHIFCHECK",
            "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "OHIFCHECK",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "StableAge": 1,
            "Plugins": [str(find_plugin("OrthancDicomWeb"))],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"},
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cfg = self.work / "orthanc.json"
        cfg.write_text(json.dumps(self.config, indent=2))
        logf = open(self.work / "orthanc.log", "wb")
        self.proc = subprocess.Popen(["Orthanc", "--verbose", str(cfg)], stdout=logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"Orthanc exited ({self.proc.returncode}); see {self.work / 'orthanc.log'}")
            try:
                with urllib.request.urlopen(self.url + "/system", timeout=2) as r:
                    info = json.load(r)
                    log(f"Orthanc {info.get('Version')} on {self.url}")
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        raise SystemExit("Orthanc did not answer /system within 30 s")

    def upload(self, files: list[Path]) -> list[dict]:
        results = []
        for f in files:
            req = urllib.request.Request(self.url + "/instances", data=f.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(req, timeout=60) as r:
                body = json.load(r)
            results.append({"file": str(f), "status": body.get("Status"), "id": body.get("ID")})
        return results

    def studies(self) -> list[dict]:
        with urllib.request.urlopen(self.url + "/studies?expand", timeout=10) as r:
            return json.load(r)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def make_front_server(dist: Path, orthanc_port: int, app_config: str) -> http.server.ThreadingHTTPServer:
    """Same origin for the viewer and DICOMweb, so no CORS and no cross-origin warning."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # the browser's view of errors is what we report
            pass

        def _proxy(self):
            body = None
            if "Content-Length" in self.headers:
                body = self.rfile.read(int(self.headers["Content-Length"]))
            conn = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "accept-encoding")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        def _static(self):
            path = self.path.split("?", 1)[0]
            if path == "/app-config.js":
                data, ctype = app_config.encode(), "application/javascript"
            else:
                f = (dist / path.lstrip("/")).resolve()
                if not (f.is_file() and str(f).startswith(str(dist.resolve()))):
                    f = dist / "index.html"  # SPA fallback: the router handles /viewer etc.
                data = f.read_bytes()
                ctype = {
                    ".js": "application/javascript", ".css": "text/css", ".html": "text/html",
                    ".wasm": "application/wasm", ".json": "application/json", ".svg": "image/svg+xml",
                    ".png": "image/png", ".ico": "image/x-icon", ".woff2": "font/woff2",
                }.get(f.suffix, "application/octet-stream")
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            # SharedArrayBuffer (used by some cornerstone decoders) needs cross-origin isolation.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _route(self):
            try:
                if self.path.startswith("/dicom-web/") or self.path.startswith("/wado"):
                    self._proxy()
                else:
                    self._static()
            except (BrokenPipeError, ConnectionResetError):
                pass

        do_GET = do_HEAD = do_POST = _route

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# Serialises OHIF objects (which hold functions, cycles, typed arrays) into plain JSON.
JS_SAFE = r"""
window.__ohifCheckSafe = (v, depth = 0, seen = new WeakSet()) => {
  if (v === null || v === undefined) return v ?? null;
  const t = typeof v;
  if (t === 'number' || t === 'string' || t === 'boolean') return v;
  if (t === 'function' || t === 'symbol' || t === 'bigint') return undefined;
  if (depth > 6) return '[depth]';
  if (ArrayBuffer.isView(v)) return Array.from(v.slice ? v.slice(0, 64) : []);
  if (seen.has(v)) return '[cycle]';
  seen.add(v);
  if (Array.isArray(v)) return v.slice(0, 200).map(x => window.__ohifCheckSafe(x, depth + 1, seen));
  const out = {};
  for (const k of Object.keys(v)) {
    const x = window.__ohifCheckSafe(v[k], depth + 1, seen);
    if (x !== undefined) out[k] = x;
  }
  return out;
};
"""

JS_DISPLAY_SETS = r"""
() => {
  const s = window.services;
  if (!s) return null;
  return s.displaySetService.getActiveDisplaySets().map(ds => ({
    displaySetInstanceUID: ds.displaySetInstanceUID,
    Modality: ds.Modality,
    SOPClassUID: ds.SOPClassUID ?? ds.instance?.SOPClassUID ?? ds.instances?.[0]?.SOPClassUID ?? null,
    SOPClassHandlerId: ds.SOPClassHandlerId,
    SeriesInstanceUID: ds.SeriesInstanceUID,
    SeriesNumber: ds.SeriesNumber ?? null,
    SeriesDescription: ds.SeriesDescription ?? null,
    label: ds.label ?? null,
    numInstances: ds.instances?.length ?? null,
    numImageFrames: ds.numImageFrames ?? null,
    unsupported: !!ds.unsupported,
    messages: ds.messages?.messages?.map(m => ({ id: m.id })) ?? [],
    isLoaded: ds.isLoaded ?? null,
    isHydrated: ds.isHydrated ?? null,
    isRehydratable: ds.isRehydratable ?? null,
    isImagingMeasurementReport: ds.isImagingMeasurementReport ?? null,
    srMeasurements: Array.isArray(ds.measurements) ? ds.measurements.map(m => window.__ohifCheckSafe({
      loaded: m.loaded, labels: m.labels, TrackingIdentifier: m.TrackingIdentifier,
      TrackingUniqueIdentifier: m.TrackingUniqueIdentifier, coords: m.coords,
      imageId: m.imageId, ReferencedSOPInstanceUID: m.ReferencedSOPInstanceUID,
      displaySetInstanceUID: m.displaySetInstanceUID, textBox: m.textBox,
    })) : null,
    referencedImages: window.__ohifCheckSafe(ds.referencedImages ?? null),
  }));
}
"""

JS_MEASUREMENTS = r"""
() => {
  const s = window.services;
  if (!s) return null;
  return s.measurementService.getMeasurements().map(m => window.__ohifCheckSafe({
    uid: m.uid, label: m.label, toolName: m.toolName, type: m.type,
    displayText: m.displayText, referencedImageId: m.referencedImageId,
    SOPInstanceUID: m.SOPInstanceUID, frameNumber: m.frameNumber,
    referenceSeriesUID: m.referenceSeriesUID, referenceStudyUID: m.referenceStudyUID,
    displaySetInstanceUID: m.displaySetInstanceUID, FrameOfReferenceUID: m.FrameOfReferenceUID,
    points: m.points, source: m.source?.name, isSRText: m.isSRText, metadata: m.metadata,
  }));
}
"""

# What cornerstone draws: an SR shown read-only (not yet tracked) lives here and not in the
# measurementService, so this is where "where does each region land" is answered.
JS_ANNOTATIONS = r"""
() => {
  const ct = window.cornerstoneTools;
  if (!ct?.annotation?.state?.getAllAnnotations) return null;
  return ct.annotation.state.getAllAnnotations().map(a => {
    const imageId = a.metadata?.referencedImageId ?? null;
    const m = imageId && /instances\/([0-9.]+)/.exec(imageId);
    return window.__ohifCheckSafe({
      annotationUID: a.annotationUID,
      toolName: a.metadata?.toolName,
      referencedImageId: imageId,
      referencedSOPInstanceUID: m ? m[1] : null,
      FrameOfReferenceUID: a.metadata?.FrameOfReferenceUID,
      TrackingUniqueIdentifier: a.data?.TrackingUniqueIdentifier,
      TrackingIdentifier: a.data?.TrackingIdentifier,
      labels: a.data?.labels,
      label: a.data?.label,
      renderableData: a.data?.renderableData,
    });
  });
}
"""

KEY_IMAGES_SERIES = "Prima AI key images"

# What each viewport shows now: its image and whether cornerstone has pixels for it.
JS_VIEWPORT_IMAGES = r"""
() => {
  const cs = window.cornerstone;
  if (!cs?.getEnabledElements) return null;
  return cs.getEnabledElements().map(e => {
    const vp = e.viewport;
    let imageId = null, dims = null;
    try { imageId = vp.getCurrentImageId?.() ?? null; } catch (err) {}
    try { const d = vp.getImageData?.(); dims = d?.dimensions ? Array.from(d.dimensions) : null; } catch (err) {}
    const m = imageId && /instances\/([0-9.]+)/.exec(imageId);
    return { viewportId: vp.id, imageId, sop_instance: m ? m[1] : null, dimensions: dims };
  });
}
"""

JS_PANEL_TEXT = r"""
() => {
  const pick = sel => Array.from(document.querySelectorAll(sel)).map(e => e.innerText.trim()).filter(Boolean);
  return {
    measurementsPanel: pick('[data-cy="trackedMeasurements-panel"], [data-cy="measurements-panel"]'),
    studyBrowser: pick('[data-cy="studyBrowser-panel"]'),
    viewportOverlays: pick('[data-cy^="viewport-overlay"]'),
    dialogs: pick('[role="dialog"], [role="alertdialog"], .modal'),
    notifications: pick('[data-sonner-toast], [role="status"], [role="alert"]'),
    body: document.body.innerText.slice(0, 400000),
  };
}
"""


def wait_for(page, js: str, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        try:
            last = page.evaluate(js)
        except Exception as e:  # navigation in progress, page crashed...
            last = f"evaluate failed: {e}"
        if last and not isinstance(last, str):
            return last
        time.sleep(0.5)
    log(f"timed out waiting for {what} ({last})")
    return None


def settle(page, seconds: float) -> None:
    try:
        page.wait_for_load_state("networkidle", timeout=int(seconds * 1000))
    except Exception:
        pass
    time.sleep(1.0)


def dismiss_tour(page) -> None:
    """OHIF's first-visit onboarding tour floats over the viewer; a user would skip it."""
    skip = page.get_by_text("Skip all", exact=True)
    if skip.count():
        try:
            skip.first.click(timeout=3000)
        except Exception:
            pass


def show_error_details(page) -> list[str]:
    """OHIF's error boundary shows only "Something went wrong" until "Show Details" is pressed;
    the details hold the exception message and component stack."""
    details = []
    buttons = page.get_by_text("Show Details", exact=True)
    for i in range(buttons.count()):
        try:
            buttons.nth(i).click(timeout=3000)
            time.sleep(0.5)
        except Exception:
            pass
    details = page.evaluate("""() => Array.from(document.querySelectorAll(
        '[role="dialog"], [data-sonner-toast], [role="alert"], pre')).map(e => e.innerText.trim()).filter(Boolean)""")
    return details


MAX_JUMPS = 12
MEASUREMENTS_PANEL = "@ohif/extension-measurement-tracking.panelModule.trackedMeasurements"


def open_right_panel(page) -> None:
    """The measurements panel starts collapsed; its text is part of what a reader sees."""
    try:
        page.evaluate("id => window.services.panelService.activatePanel(id, true)", MEASUREMENTS_PANEL)
        time.sleep(1.5)
    except Exception as e:
        log(f"could not open the measurements panel: {e}")


def summarize(viewer: dict) -> dict:
    """The few facts an acceptance check needs, drawn from the detailed report."""
    errors = [e["message"] for e in viewer["page_errors"]]
    errors += [c["text"] for c in viewer["console"] if c["type"] == "error"]
    for st in viewer["steps"]:
        errors += [d.split("\n", 1)[0] for d in st.get("error_details", [])]
    srs = [d for d in viewer.get("display_sets_after") or [] if d["Modality"] == "SR"]
    groups = [m for d in srs for m in (d.get("srMeasurements") or [])]
    names = {g.get("TrackingUniqueIdentifier"): g.get("TrackingIdentifier") for g in groups}
    return {
        "errors": errors,
        "unsupported_display_sets": [f'{d["Modality"]} {d.get("SeriesDescription")} ({d["SOPClassUID"]})'
                                     for d in viewer.get("display_sets_after") or [] if d["unsupported"]],
        "sr_display_sets": len(srs),
        "sr_loaded": all(d.get("isLoaded") for d in srs) if srs else False,
        "sr_groups": len(groups),
        "sr_groups_with_coords": sum(1 for g in groups if g.get("coords")),
        "sr_groups_placed": sum(1 for g in groups if g.get("loaded")),
        "measurements_in_service": len(viewer.get("measurements") or []),
        "annotations_drawn": [
            {"tracking": names.get(a.get("TrackingUniqueIdentifier"), a.get("TrackingUniqueIdentifier")),
             "sop_instance": a.get("referencedSOPInstanceUID"),
             "labels": [f'{x.get("label")}: {x.get("value")}' for x in a.get("labels") or []]}
            for a in viewer.get("annotations") or [] if a.get("toolName") != "ReferenceLines"],
        "measurement_labels": [m.get("label") for m in viewer.get("measurements") or []],
        "key_image_sets": [
            {"instances": d.get("numInstances"), "unsupported": d["unsupported"],
             "handler": d.get("SOPClassHandlerId")}
            for d in viewer.get("display_sets_after") or []
            if (d.get("SeriesDescription") or "").startswith(KEY_IMAGES_SERIES)],
        "key_images_shown": [
            {"sop_instance": v.get("sop_instance"), "dimensions": v.get("dimensions")}
            for st in viewer.get("key_images") or [] for v in st.get("viewports") or []
            if v.get("sop_instance")],
    }


def clean(summary: dict) -> bool:
    """No error, and every SR group that carries a region was placed on an image."""
    return (not summary["errors"] and summary["sr_display_sets"] > 0 and summary["sr_loaded"]
            and summary["sr_groups_placed"] >= summary["sr_groups_with_coords"])


# OHIF 3.13.2 DisplaySetMessage.CODES, inverted: the page only holds the numbers.
DISPLAY_SET_MESSAGES = {
    1: "NO_VALID_INSTANCES", 2: "NO_POSITION_INFORMATION", 3: "NOT_RECONSTRUCTABLE",
    4: "MULTIFRAME_NO_PIXEL_MEASUREMENTS", 5: "MULTIFRAME_NO_ORIENTATION",
    6: "MULTIFRAME_NO_POSITION_INFORMATION", 7: "MISSING_FRAMES", 8: "IRREGULAR_SPACING",
    9: "INCONSISTENT_DIMENSIONS", 10: "INCONSISTENT_COMPONENTS", 11: "INCONSISTENT_ORIENTATIONS",
    12: "INCONSISTENT_POSITION_INFORMATION", 13: "UNSUPPORTED_DISPLAYSET",
    14: "UNSUPPORTED_SOP_CLASS_UID", 15: "MISSING_SOP_CLASS_UID",
}


def name_messages(display_sets):
    for d in display_sets or []:
        for m in d.get("messages", []):
            m["text"] = DISPLAY_SET_MESSAGES.get(m.get("id"), m.get("text"))
    return display_sets


def run_viewer(base: str, study_uid: str, out: Path, timeout_s: float) -> dict:
    from playwright.sync_api import sync_playwright

    report: dict = {"console": [], "console_counts": {}, "page_errors": [], "http_errors": [], "request_failures": [], "steps": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.add_init_script(JS_SAFE)

        def on_console(msg):
            report["console_counts"][msg.type] = report["console_counts"].get(msg.type, 0) + 1
            if msg.type in ("error", "warning", "assert"):
                loc = msg.location or {}
                report["console"].append({"type": msg.type, "text": msg.text[:4000],
                                          "url": loc.get("url"), "line": loc.get("lineNumber")})

        def on_pageerror(err):
            report["page_errors"].append({"message": str(err), "stack": (getattr(err, "stack", None) or "")[:4000]})

        page.on("console", on_console)
        page.on("pageerror", on_pageerror)
        page.on("response", lambda r: r.status >= 400 and report["http_errors"].append(
            {"status": r.status, "url": r.url[:300]}))
        page.on("requestfailed", lambda r: report["request_failures"].append(
            {"url": r.url[:300], "failure": r.failure}))

        url = f"{base}/viewer?StudyInstanceUIDs={study_uid}"
        report["url"] = url
        log(f"open {url}")
        page.goto(url, wait_until="domcontentloaded", timeout=int(timeout_s * 1000))
        report["webgl"] = page.evaluate("""() => {
            const gl = document.createElement('canvas').getContext('webgl2');
            if (!gl) return null;
            const dbg = gl.getExtension('WEBGL_debug_renderer_info');
            return dbg ? gl.getParameter(dbg.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
        }""")
        ds = wait_for(page, "() => window.services && window.services.displaySetService.getActiveDisplaySets().length", timeout_s, "display sets")
        settle(page, 20)
        # Display sets arrive series by series; wait until the count stops changing.
        prev, stable_since, deadline = -1, time.time(), time.time() + timeout_s
        while time.time() - stable_since < 3 and time.time() < deadline:
            n = page.evaluate("() => window.services?.displaySetService.getActiveDisplaySets().length ?? 0")
            if n != prev:
                prev, stable_since = n, time.time()
            time.sleep(0.5)
        report["steps"].append({"step": "study opened", "display_sets": prev})
        page.screenshot(path=str(out / "01-study.png"))
        report["display_sets_before"] = name_messages(page.evaluate(JS_DISPLAY_SETS))
        report["panel_text_before"] = page.evaluate(JS_PANEL_TEXT)

        srs = [d for d in (report["display_sets_before"] or []) if d["Modality"] == "SR"]
        for i, sr in enumerate(srs, start=1):
            sel = f'[id="thumbnail-{sr["displaySetInstanceUID"]}"]'
            step = {"step": "double-click SR thumbnail", "displaySetInstanceUID": sr["displaySetInstanceUID"],
                    "label": sr["label"], "errors_before": len(report["page_errors"]) + len(report["console"])}
            try:
                dismiss_tour(page)
                page.locator(sel).filter(visible=True).first.dblclick(timeout=10000)
                step["clicked"] = True
            except Exception as e:
                step["clicked"] = False
                step["click_error"] = str(e)[:500]
            settle(page, 15)
            time.sleep(3)
            step["errors_after"] = len(report["page_errors"]) + len(report["console"])
            step["error_details"] = show_error_details(page)
            page.screenshot(path=str(out / f"02-sr{i}-opened.png"))
            step["panel_text"] = page.evaluate(JS_PANEL_TEXT)
            step["viewports"] = page.evaluate("""() => {
                const g = window.services.viewportGridService.getState();
                return Array.from(g.viewports.values()).map(v => ({
                    viewportId: v.viewportId, displaySetInstanceUIDs: v.displaySetInstanceUIDs,
                    viewportType: v.viewportOptions?.viewportType }));
            }""")
            report["steps"].append(step)

        # The derived key-image series: opened like a user would, then what the viewport shows.
        report["key_images"] = []
        keys = [d for d in (report["display_sets_before"] or [])
                if (d.get("SeriesDescription") or "").startswith(KEY_IMAGES_SERIES)]
        for i, k in enumerate(keys, start=1):
            step = {"step": "double-click key-image thumbnail", "displaySetInstanceUID": k["displaySetInstanceUID"]}
            try:
                dismiss_tour(page)
                page.locator(f'[id="thumbnail-{k["displaySetInstanceUID"]}"]').filter(visible=True).first.dblclick(timeout=10000)
                step["clicked"] = True
            except Exception as e:
                step["clicked"] = False
                step["click_error"] = str(e)[:500]
            settle(page, 10)
            time.sleep(2)
            step["viewports"] = page.evaluate(JS_VIEWPORT_IMAGES)
            page.screenshot(path=str(out / f"05-key-images{i}.png"))
            report["key_images"].append(step)

        report["display_sets_after"] = name_messages(page.evaluate(JS_DISPLAY_SETS))
        report["measurements"] = page.evaluate(JS_MEASUREMENTS)
        report["annotations"] = page.evaluate(JS_ANNOTATIONS)
        open_right_panel(page)
        report["panel_text_after"] = page.evaluate(JS_PANEL_TEXT)
        page.screenshot(path=str(out / "03-final.png"))
        # Where each region lands: jump to it as the measurement panel's row click does.
        report["jumps"] = []
        for i, m in enumerate((report["measurements"] or [])[:MAX_JUMPS], start=1):
            jump = {"uid": m.get("uid"), "label": m.get("label"), "screenshot": f"04-measurement{i}.png"}
            try:
                page.evaluate("uid => window.commandsManager.run('jumpToMeasurement', { uid })", m.get("uid"))
                time.sleep(2)
                jump["viewport_overlays"] = page.evaluate(JS_PANEL_TEXT)["viewportOverlays"]
            except Exception as e:
                jump["error"] = str(e)[:500]
            page.screenshot(path=str(out / jump["screenshot"]))
            report["jumps"].append(jump)
        browser.close()
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="DICOM files or directories (recursive)")
    ap.add_argument("--out", required=True, help="directory for report.json and screenshots")
    ap.add_argument("--dist", default=str(DEFAULT_DIST), help="OHIF dist directory")
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for the viewer to load")
    ap.add_argument("--expect-clean", action="store_true",
                    help="exit 1 unless OHIF shows no error and places every SR group that has a region")
    ap.add_argument("--keep", action="store_true", help="keep Orthanc's temp dir and print where")
    args = ap.parse_args()

    dist = Path(args.dist)
    if not (dist / "index.html").is_file():
        raise SystemExit(f"no OHIF dist at {dist}; run scripts/viewer-setup.sh")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = dicom_files(args.paths)
    if not files:
        raise SystemExit("no DICOM Part 10 files found")

    work = Path(tempfile.mkdtemp(prefix="ohif-check-"))
    orthanc = Orthanc(work)
    srv = None
    report: dict = {"ohif_version": OHIF_VERSION, "inputs": args.paths, "files": len(files)}
    try:
        orthanc.start()
        uploads = orthanc.upload(files)
        report["upload"] = {s: sum(1 for u in uploads if u["status"] == s) for s in {u["status"] for u in uploads}}
        studies = orthanc.studies()
        report["studies"] = [{"StudyInstanceUID": s["MainDicomTags"].get("StudyInstanceUID"),
                              "series": len(s.get("Series", []))} for s in studies]
        log(f"uploaded {len(files)} files: {report['upload']}; studies {report['studies']}")
        srv = make_front_server(dist, orthanc.http_port, APP_CONFIG)
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        report["viewer"] = {}
        for s in report["studies"]:
            viewer = run_viewer(base, s["StudyInstanceUID"], out, args.timeout)
            viewer["summary"] = summarize(viewer)
            report["viewer"][s["StudyInstanceUID"]] = viewer
            log(f"summary: {json.dumps(viewer['summary'])}")
        report["clean"] = all(clean(v["summary"]) for v in report["viewer"].values())
    finally:
        if srv:
            srv.shutdown()
        orthanc.stop()
        shutil.copy(work / "orthanc.log", out / "orthanc.log") if (work / "orthanc.log").exists() else None
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
        log(f"wrote {out / 'report.json'}")
    if args.expect_clean and not report.get("clean"):
        log("not clean: errors, or SR groups with regions that OHIF did not place")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
