"""A live web page: the current overlay frame, the dose counters and the alerts.

Served by the standard library (``http.server.ThreadingHTTPServer``) on 127.0.0.1 by default;
nothing is fetched from elsewhere, so the page works on a workstation without internet.

=================  =============================================================================
path               what
=================  =============================================================================
``/``              the page; it polls ``/state.json`` every 200 ms and reloads the frame when
                   a new one is there
``/state.json``    ``{"seq", "index", "t_s", "dose": {"fluoro_time_s", "air_kerma_mgy",
                   "dap_gycm2", "dose_source"}, "contrast", "tip_to_target_mm", "tip_to_target_mm_iso",
                   "analysis", "alerts": [...],
                   "ended", "summary"}`` (``summary`` once the study ended, with its ``stages``; ``analysis``
                   says how fully the frame was analysed, :func:`~sifluoro.engine.frame_analysis`;
                   ``contrast`` is
                   ``not_assessed`` when no contrast stage runs; ``dose`` also holds
                   ``study_*``, shown instead, when exposures not stored add to the frames')
``/frame.jpg``     the latest overlay frame (JPEG)
``/stream.mjpg``   the overlay frames as MJPEG (``multipart/x-mixed-replace``), for an ``<img>``
                   or a video player
=================  =============================================================================

The page and the state carry no patient name or ID (the overlay has none either).
"""
from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from sifluoro.engine import FrameEvent, frame_analysis
from sifluoro.errors import ConfigError
from sifluoro.model import Frame, Study

log = logging.getLogger(__name__)

JPEG_QUALITY = 90
BOUNDARY = "sifluoro-frame"


class ViewState:
    """What the page shows, updated by :class:`ViewSink` and read by the HTTP threads."""

    def __init__(self):
        self._cond = threading.Condition()
        self._seq = 0
        self._jpeg: bytes | None = None
        self._state: dict = {"seq": 0, "index": None, "t_s": None,
                             "dose": {"fluoro_time_s": 0.0, "air_kerma_mgy": 0.0, "dap_gycm2": 0.0,
                                      "dose_source": "none", "study_fluoro_time_s": 0.0,
                                      "study_air_kerma_mgy": 0.0, "study_dap_gycm2": 0.0},
                             # nothing assessed before the first frame (user review s20 I4)
                             "contrast": "not_assessed", "tip_to_target_mm": None,
                             "tip_to_target_mm_iso": None, "alerts": [],
                             "ended": False, "summary": None,
                             # every key of contract §5 from the start (review s22 F11)
                             "analysis": frame_analysis({})}
        self.closed = False

    def update(self, event: dict, overlay_bgr: np.ndarray, contrast: str | None = None,
               analysis: dict | None = None) -> None:
        """Show ``event`` and its overlay; ``contrast`` overrides the event's contrast state
        (``not_assessed`` when no contrast stage runs); ``analysis`` is
        :func:`~sifluoro.engine.frame_analysis` (how fully the frame was analysed)."""
        ok, jpeg = cv2.imencode(".jpg", overlay_bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV could not encode the overlay frame as JPEG")
        with self._cond:
            self._seq += 1
            self._jpeg = jpeg.tobytes()
            alerts = self._with_alerts(event["index"], [{**a, "index": event["index"]}
                                                        for a in event.get("alerts", ())])
            self._state = {**self._state, "seq": self._seq, "index": event["index"],
                           "t_s": event["t_s"], "dose": dict(event["dose"]),
                           "contrast": contrast or event["contrast"]["state"],
                           "tip_to_target_mm": event.get("tip_to_target_mm"),
                           "tip_to_target_mm_iso": event.get("tip_to_target_mm_iso"),
                           "analysis": analysis or frame_analysis(event),
                           "alerts": alerts}
            self._cond.notify_all()

    def _with_alerts(self, index: int | None, alerts) -> list[dict]:
        """The alerts shown, with those of ``alerts`` not shown yet (same message), lock held;
        an alert without its own index gets ``index``."""
        shown = list(self._state["alerts"])
        for a in alerts:
            if not any(a.get("message", "") == b["message"] for b in shown):
                shown.append({"index": a.get("index", index), "kind": a.get("kind", ""),
                              "message": a.get("message", "")})
        return shown

    def add_alert(self, index: int, kind: str, message: str) -> None:
        """An alert raised between frames (frames lost in a damaged run): shown at once."""
        with self._cond:
            alerts = self._with_alerts(index, [{"index": index, "kind": kind, "message": message}])
            if len(alerts) > len(self._state["alerts"]):
                self._state = {**self._state, "alerts": alerts}
                self._cond.notify_all()

    def finish(self, summary: dict) -> None:
        """The study ended: its summary, and the counters show its whole dose (frames lost in
        damaged files and exposures not stored included: ``study_*``)."""
        keep = ("study_instance_uid", "frames", "runs", "fluoro_time_s", "air_kerma_mgy",
                "dap_gycm2", "dose_source", "contrast_state", "srdl_exceeded", "study_dose",
                "lost_frames", "ended_early", "stages")  # stages: "none" from "not assessed"
        whole = summary.get("study_dose") or {}
        with self._cond:
            dose = {**self._state["dose"], **{f"study_{k}": whole[k] for k in
                                              ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s")
                                              if whole.get(k) is not None}}
            alerts = self._with_alerts(None, summary.get("alerts", ()))
            self._state = {**self._state, "ended": True, "dose": dose, "alerts": alerts,
                           "summary": {k: summary.get(k) for k in keep}}
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def snapshot(self) -> dict:
        with self._cond:
            return self._state

    def frame(self) -> tuple[int, bytes | None]:
        with self._cond:
            return self._seq, self._jpeg

    def wait_newer(self, seq: int, timeout_s: float) -> tuple[int, bytes | None]:
        """The first frame after ``seq`` (or the current one after ``timeout_s``)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seq or self.closed, timeout_s)
            return self._seq, self._jpeg


class ViewSink:
    """A live sink (:mod:`sifluoro.plugin.live`) feeding a :class:`ViewState`."""

    wants_overlay = True

    def __init__(self, state: ViewState):
        self.state = state

    def start(self, study: Study) -> None:
        pass

    def frame(self, frame: Frame, event: FrameEvent, overlay_bgr: np.ndarray) -> None:
        self.state.update(dict(event.event), overlay_bgr, event.contrast_state, event.analysis)

    def alert(self, alert) -> None:
        self.state.add_alert(alert.index, alert.kind, alert.message)

    def end(self, study, summary: dict, dose) -> None:
        self.state.finish(summary)


#: MJPEG streams served at once (a workstation's page and a few viewers); one more is
#: answered 503
MAX_STREAMS = 8


class _Handler(BaseHTTPRequestHandler):
    server_version = "sifluoro-view"
    state: ViewState  # set on the per-server subclass
    streams: threading.BoundedSemaphore  # the same: MJPEG streams open at once

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(PAGE.encode("utf-8"), "text/html; charset=utf-8")
        elif path == "/state.json":
            self._send(json.dumps(self.state.snapshot()).encode("utf-8"), "application/json")
        elif path == "/frame.jpg":
            _, jpeg = self.state.frame()
            if jpeg is None:
                self.send_error(HTTPStatus.NOT_FOUND, "no frame yet")
            else:
                self._send(jpeg, "image/jpeg")
        elif path == "/stream.mjpg":
            self._stream()
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        # each stream holds a thread for as long as its client reads: a bounded number
        if not self.streams.acquire(blocking=False):
            self.send_error(HTTPStatus.SERVICE_UNAVAILABLE,
                            f"{MAX_STREAMS} streams are open already; use /frame.jpg")
            return
        try:
            self._stream_frames()
        finally:
            self.streams.release()

    def _stream_frames(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        seq = 0
        try:
            while not self.state.closed:
                seq, jpeg = self.state.wait_newer(seq, 1.0)
                if jpeg is None:
                    continue
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                 f"Content-Length: {len(jpeg)}\r\n\r\n".encode("ascii"))
                self.wfile.write(jpeg + b"\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        log.debug("view %s: " + format, self.address_string(), *args)


class ViewServer:
    """Serves the page for ``state`` on ``host:port`` (port 0: a free one) from a thread."""

    def __init__(self, state: ViewState, *, host: str = "127.0.0.1", port: int = 8000):
        handler = type("Handler", (_Handler,), {
            "state": state, "streams": threading.BoundedSemaphore(MAX_STREAMS)})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"view port {port} on {host}: cannot listen ({exc.strerror}); "
                              "choose another --port") from exc
        self.httpd.daemon_threads = True
        self.state = state
        self.host, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="sifluoro-view",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> "ViewServer":
        self._thread.start()
        return self

    def close(self) -> None:
        self.state.close()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5.0)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sifluoro live</title>
<style>
 body { margin: 0; background: #111; color: #eee; font: 15px/1.4 sans-serif; display: flex;
        align-items: flex-start; }
 #frame { display: block; background: #000; }
 #panel { padding: 8px 16px; min-width: 260px; }
 h1 { font-size: 16px; margin: 0 0 8px; }
 table { border-collapse: collapse; }
 td { padding: 2px 8px 2px 0; } td.v { text-align: right; font-weight: bold;
   font-variant-numeric: tabular-nums; }
 #alerts li { color: #ff5050; } #status { color: #aaa; }
</style></head>
<body data-seq="0">
<img id="frame" alt="current overlay frame">
<div id="panel">
 <h1>sifluoro live</h1>
 <table>
  <tr><td>fluoro time</td><td class="v" id="fluoro_time_s" data-value="">-</td><td>s</td></tr>
  <tr><td>air kerma (K<sub>a,r</sub>)</td><td class="v" id="air_kerma_mgy" data-value="">-</td><td>mGy</td></tr>
  <tr><td>DAP</td><td class="v" id="dap_gycm2" data-value="">-</td><td>Gy&middot;cm&sup2;</td></tr>
  <tr><td>dose</td><td class="v" id="dose_source">-</td><td></td></tr>
  <tr><td>contrast</td><td class="v" id="contrast">-</td><td></td></tr>
  <tr><td>tip to target</td><td class="v" id="tip_to_target_mm">-</td><td id="tip_to_target_plane">mm</td></tr>
 </table>
 <p id="status">waiting for frames</p>
 <h1>alerts</h1>
 <ul id="alerts"></ul>
</div>
<script>
"use strict";
const DIGITS = {fluoro_time_s: 1, air_kerma_mgy: 2, dap_gycm2: 3};
const SOURCES = {reported: "reported by the device", rdsr: "the device's dose report",
                 estimated: "estimated", mixed: "partly estimated", none: "unknown"};
let shown = 0;
function render(s) {
  for (const key in DIGITS) {
    const cell = document.getElementById(key);
    const value = s.dose["study_" + key] ?? s.dose[key];  // the study's whole dose when given
    cell.dataset.value = String(value);
    cell.textContent = value.toFixed(DIGITS[key]);
  }
  // an estimate is said to be one (user review s20 R3)
  document.getElementById("dose_source").textContent = SOURCES[s.dose.dose_source] ?? "-";
  document.getElementById("contrast").textContent = s.contrast.replace("_", "-");
  // the plane named: at the isocentre (near the joint, as the PACS measures the key frames)
  // when the geometry is known, else at the detector, larger by the magnification
  const detector = s.tip_to_target_mm, iso = s.tip_to_target_mm_iso ?? null;
  document.getElementById("tip_to_target_mm").textContent =
    detector === null ? "-" : (iso === null ? detector.toFixed(1)
                               : iso.toFixed(1) + " (" + detector.toFixed(1) + " at the detector)");
  document.getElementById("tip_to_target_plane").textContent =
    detector === null ? "mm" : (iso === null ? "mm at the detector" : "mm at the joint");
  const list = document.getElementById("alerts");
  if (list.children.length !== s.alerts.length) {
    list.replaceChildren(...s.alerts.map(a => {
      const li = document.createElement("li");
      li.textContent = "frame " + a.index + ": " + (a.message || a.kind);
      return li;
    }));
  }
  document.getElementById("status").textContent = s.index === null ? "waiting for frames" :
    (s.ended ? "study ended: " : "live: ") + "frame " + s.index + ", t = " + s.t_s.toFixed(2) + " s"
    + (s.analysis && s.analysis.degraded ? " (" + degradedText(s.analysis) + ")" : "");
  document.body.dataset.ended = s.ended ? "yes" : "no";
  if (s.seq !== shown) {
    shown = s.seq;
    const img = document.getElementById("frame");
    img.onload = () => { document.body.dataset.seq = String(img.dataset.seq); };
    img.dataset.seq = String(s.seq);
    img.src = "/frame.jpg?seq=" + s.seq;
  }
}
function degradedText(a) {
  if (a.no_picture) return "no picture: not analysed";
  if (a.dropped) return "image work dropped: results carried over";
  const parts = a.degraded_steps.concat(a.skipped_stages.map(n => n + " skipped"),
                                        a.failed_stages.map(n => n + " failed"));
  return "degraded" + (parts.length ? ": " + parts.join(", ") : ": over budget");
}
async function poll() {
  try {
    const response = await fetch("/state.json", {cache: "no-store"});
    render(await response.json());
  } catch (err) {
    document.getElementById("status").textContent = "connection lost; retrying";
  }
  setTimeout(poll, 200);
}
poll();
</script>
</body></html>
"""
