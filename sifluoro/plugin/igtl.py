"""OpenIGTLink out: tip and target for 3D Slicer / SlicerIGT, with the overlay and the state.

Messages (pyigtl encodes them), per frame:

============  ==========  ==================================================================
device name   type        content
============  ==========  ==================================================================
``Tip``       POINT       the needle tip, when the frame shows one (green, 1 mm); an empty
                          list when it does not (Slicer then removes the point)
``TipToImage`` TRANSFORM  the same tip as a translation (for SlicerIGT modules that follow a
                          transform, e.g. Breach Warning), only on frames that show it
``Target``    POINT       the target, when placed (yellow; diameter = acceptance circle);
                          an empty list (Status MISSING) when it is no longer placed
``State``     STRING      JSON: frame index and time, contrast state (``not_assessed``
                          when no contrast stage runs), whether the tip is seen
                          (``tip_visible``, ``tip_confidence``, ``end_on``: a dot, lower
                          confidence), ``target_visible``, tip-to-target mm,
                          ``scale_unknown`` (no pixel spacing: no joint line, the State's mm
                          null, the positions sent in pixels),
                          cumulative dose (``air_kerma_mgy``, ``dap_gycm2``,
                          ``fluoro_time_s``, ``dose_source``: ``estimated``, ...;
                          ``study_*`` too when exposures not
                          stored add to the frames'), how fully the frame was
                          analysed (``degraded``, ``degraded_steps``,
                          ``skipped_stages``, ``failed_stages``, ``dropped``,
                          ``no_picture``: :func:`~sifluoro.engine.frame_analysis`),
                          the frame's ``alerts`` and the study's so far
                          (``study_alerts``: Slicer keeps only the last State). At the
                          study's end one more: ``ended``, ``ended_early``, the study's
                          whole dose (``study_*``: frames lost in damaged files and
                          exposures not stored included), ``lost_frames``, every alert
``Overlay``   IMAGE       the annotated frame, RGB ``uint8``
============  ==========  ==================================================================

When the tip is lost, a client must not keep showing the last one as current. ``Tip`` and
``TipToImage`` carry a status in OpenIGTLink v3 metadata (message header version 2), in PLUS's
words: ``Status`` (``Tip``) and ``TransformStatus`` (``TipToImage``) are ``OK`` or ``MISSING``.
Slicer (OpenIGTLinkIF) copies a transform's ``TransformStatus`` into the transform node's
attribute of that name and replaces a point list's points with the message's, so the empty
``Tip`` list clears the point. ``TipToImage`` is not sent while the tip is lost, as PLUS does
not send an invalid transform by default: SlicerIGT's Watchdog, set on ``TipToImage``, then
shows it stale (Breach Warning reads no status and keeps its last distance). One
``TipToImage`` at the last position with ``TransformStatus`` ``MISSING`` marks the moment the
tip was lost. ``State`` says it too (``tip_visible``).

Coordinates are millimetres in the detector plane, given to Slicer as RAS with
``R = -x * spacing``, ``A = -y * spacing``, ``S = 0`` (x = column, y = row), so that the
``Overlay`` image and the points line up and the frame reads upright in Slicer's axial (red)
view. Without a pixel spacing, 1 mm per pixel is assumed (and said once in the log).

The server is written here rather than taken from ``pyigtl.OpenIGTLinkServer``, which serves one
client at a time from a 100-message queue that drops the oldest, and replaces the process's
SIGTERM/SIGINT handlers. Here every client gets every message: points, transforms and strings
are queued in order per client (a client that falls 10 000 messages behind is disconnected);
images are coalesced (a slow client gets the latest overlay, never a backlog of them).
"""
from __future__ import annotations

import collections
import json
import logging
import socket
import threading
import time
from typing import Sequence

import numpy as np
import pyigtl

from sifluoro.engine import FrameEvent
from sifluoro.errors import ConfigError
from sifluoro.model import Frame, Study

log = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 10_000
#: clients served at once (a navigation system, a viewer or two); more are closed at once, said:
#: each holds a thread and a queue of up to MAX_QUEUED_MESSAGES
MAX_CLIENTS = 8
GREEN = (0, 255, 0, 255)
YELLOW = (255, 215, 0, 255)


class _Client:
    """One connected client: a sender thread with an ordered queue plus the latest image, and a
    reader thread that discards what the client sends (Slicer sends status messages)."""

    def __init__(self, sock: socket.socket, address, server: "IgtlServer"):
        self.sock, self.address, self.server = sock, address, server
        self.queue: collections.deque[bytes] = collections.deque()
        self.image: bytes | None = None
        self.cond = threading.Condition()
        self.closed = False
        self._sending = False  # a batch is being written to the socket
        self.sender = threading.Thread(target=self._send_loop, daemon=True,
                                       name=f"sifluoro-igtl-send-{address[1]}")
        self.reader = threading.Thread(target=self._read_loop, daemon=True,
                                       name=f"sifluoro-igtl-read-{address[1]}")

    def start(self) -> None:
        self.sender.start()
        self.reader.start()

    def put(self, ordered: Sequence[bytes], image: bytes | None) -> None:
        with self.cond:
            if self.closed:
                return
            if len(self.queue) + len(ordered) > MAX_QUEUED_MESSAGES:
                log.warning("OpenIGTLink client %s:%d is %d messages behind; disconnecting it",
                            *self.address[:2], len(self.queue))
                self.server.note_short_client()
                self._close_locked()
                return
            self.queue.extend(ordered)
            if image is not None:
                self.image = image
            self.cond.notify()

    def _send_loop(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self.queue and self.image is None:
                    self.cond.wait()
                if self.closed:
                    return
                batch = list(self.queue)
                self.queue.clear()
                if self.image is not None:
                    batch.append(self.image)
                    self.image = None
                self._sending = True
            try:
                self.sock.sendall(b"".join(batch))
            except OSError as exc:
                log.info("OpenIGTLink client %s:%d gone (%s)", *self.address[:2], exc.strerror)
                self.close()
                return
            finally:
                with self.cond:
                    self._sending = False
                    self.cond.notify_all()

    def _read_loop(self) -> None:
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        self.close()

    def wait_sent(self, deadline: float) -> bool:
        """Wait until everything queued is sent; True when it was (not closed, not late)."""
        with self.cond:
            while not self.closed and (self.queue or self.image is not None or self._sending):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return not self.closed

    def close(self) -> None:
        with self.cond:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.server._forget(self)


class IgtlServer:
    """An OpenIGTLink server that sends every message to every connected client.

    Parameters
    ----------
    host : str
        Address to listen on (127.0.0.1 by default: the navigation system on this machine).
    port : int
        TCP port; 0 picks a free one (see :attr:`port`). 18944 is OpenIGTLink's usual port.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 18944):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
        except OSError as exc:
            self._listener.close()
            raise ConfigError(f"igtl port {port} on {host}: cannot listen ({exc.strerror}); "
                              "choose another --port") from exc
        self._listener.listen(8)
        self.host, self.port = self._listener.getsockname()[:2]
        self._clients: list[_Client] = []
        self._lock = threading.Lock()
        self._connected = threading.Condition(self._lock)
        self._closed = False
        #: clients that did not receive everything sent while they were connected (too far
        #: behind, or still behind when the server closed)
        self.short_clients = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="sifluoro-igtl-accept")
        self._acceptor.start()

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def wait_for_client(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """Wait until at least one client is connected, or ``stop`` is set (a first Ctrl-C
        waited out the whole timeout; review s22 F9); True when one is."""
        deadline = time.monotonic() + timeout_s
        with self._connected:
            while not (self._clients or self._closed or (stop is not None and stop.is_set())):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._connected.wait(min(left, 0.1))
            return bool(self._clients)

    def send(self, messages: Sequence[pyigtl.MessageBase]) -> int:
        """Send ``messages`` to every client (packed once; images coalesced per client);
        returns how many clients they went to. With none connected nothing is packed (an
        overlay image is megabytes a frame)."""
        with self._lock:
            clients = list(self._clients)
        if not clients:
            return 0
        ordered, image = [], None
        for message in messages:
            packed = message.pack()
            if isinstance(message, pyigtl.ImageMessage):
                image = packed
            else:
                ordered.append(packed)
        for client in clients:
            client.put(ordered, image)
        return len(clients)

    def note_short_client(self) -> None:
        with self._lock:
            self.short_clients += 1

    def close(self, flush_timeout_s: float = 5.0) -> int:
        """Stop accepting, give clients ``flush_timeout_s`` to receive what is queued, close.
        Returns :attr:`short_clients`."""
        with self._lock:
            self._closed = True
            self._connected.notify_all()
            clients = list(self._clients)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        deadline = time.monotonic() + flush_timeout_s
        for client in clients:
            if not client.wait_sent(deadline) and not client.closed:
                self.note_short_client()  # still behind: what is queued is dropped
            client.close()
        self._acceptor.join(flush_timeout_s)
        return self.short_clients

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, address = self._listener.accept()
            except OSError:
                return  # closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock, address, self)
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                full = len(self._clients) >= MAX_CLIENTS
                if not full:
                    self._clients.append(client)
                    self._connected.notify_all()
            if full:
                log.warning("OpenIGTLink: a client from %s:%d refused: %d are connected already",
                            address[0], address[1], MAX_CLIENTS)
                sock.close()
                continue
            log.info("OpenIGTLink client connected from %s:%d", *address[:2])
            client.start()

    def _forget(self, client: _Client) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)


class _NoPoints(pyigtl.PointMessage):
    """A POINT message with an empty point list (pyigtl packs at least one point)."""

    def _pack_content(self) -> bytes:
        return b""


def study_end_state(summary: dict) -> dict:
    """The ``State`` sent at the study's end (its summary): it ended (or ended early), with its
    whole dose (``study_*``: frames lost in damaged files and exposures not stored included),
    ``lost_frames`` and every alert."""
    whole = summary.get("study_dose") or {}
    totals = ("air_kerma_mgy", "dap_gycm2", "fluoro_time_s")
    return {"ended": True, "ended_early": summary.get("ended_early"),
            "frames": summary.get("frames"),
            "contrast": (summary.get("contrast_state")
                         if "contrast" in summary.get("stages", ()) else "not_assessed"),
            **{k: summary.get(k) for k in totals},
            **{f"study_{k}": whole.get(k, summary.get(k)) for k in totals},
            "lost_frames": (summary.get("lost_frames") or {}).get("frames", 0),
            "srdl_exceeded": summary.get("srdl_exceeded", []),
            "study_alerts": [a.get("message", a.get("kind")) for a in summary.get("alerts", ())]}


def _with_status(message: pyigtl.MessageBase, key: str, status: str) -> pyigtl.MessageBase:
    """``message`` with ``{key: status}`` as OpenIGTLink v3 metadata (header version 2). It also
    keeps an empty POINT list from being dropped: the OpenIGTLink library unpacks a body only
    when it holds more than the extended header and the metadata count."""
    message.header_version = 2
    message.metadata = {key: status}
    return message


def ijk_to_ras(spacing_xy_mm: tuple[float, float]) -> np.ndarray:
    """Pixel (column, row, 0) to RAS millimetres, as described in the module docstring."""
    sx, sy = spacing_xy_mm
    return np.array([[-sx, 0, 0, 0], [0, -sy, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)


class IgtlSink:
    """A live sink (:mod:`sifluoro.plugin.live`) that turns each frame into OpenIGTLink messages.

    Parameters
    ----------
    server : IgtlServer
    image_every : int
        Send the overlay every n-th frame (0: never); points and state go every frame.
    """

    wants_overlay = True

    def __init__(self, server: IgtlServer, *, image_every: int = 1):
        if image_every < 0:
            raise ConfigError(f"igtl image_every must be >= 0, got {image_every}")
        self.server = server
        self.image_every = image_every
        self.frames = 0
        self.frames_to_clients = 0  # frames sent while a client was connected
        self.tips_sent = 0
        self._warned_spacing = False
        self._last_tip_matrix: np.ndarray | None = None  # of the last frame, when it showed one
        self._target_shown = False  # a Target was sent and not cleared since
        self._alerts: list[str] = []  # the study's alerts so far (Slicer keeps the last State)

    def start(self, study: Study) -> None:
        self._last_tip_matrix = None  # a tip of the study before is not this one's to lose
        self._target_shown = False
        self._alerts = []

    def _matrix(self, frame: Frame) -> np.ndarray:
        spacing = frame.pixel_spacing_xy_mm
        if not spacing:
            if not self._warned_spacing:
                log.warning("no pixel spacing in the study: OpenIGTLink coordinates assume 1 mm "
                            "per pixel")
                self._warned_spacing = True
            spacing = (1.0, 1.0)
        return ijk_to_ras(spacing)

    def messages(self, frame: Frame, event: FrameEvent,
                 overlay_bgr: np.ndarray | None) -> list[pyigtl.MessageBase]:
        """The OpenIGTLink messages of one frame."""
        e = event.event
        m = self._matrix(frame)
        now = time.time()

        def ras(xy) -> list[float]:
            return [float(v) for v in (m @ np.array([xy[0], xy[1], 0.0, 1.0]))[:3]]

        out: list[pyigtl.MessageBase] = []
        needle = e.get("needle")
        if needle:
            tip = ras(needle["tip_xy"])
            out.append(_with_status(pyigtl.PointMessage(
                positions=[tip], names="Tip", groups="sifluoro", rgba_colors=GREEN, diameters=1.0,
                owners="sifluoro", timestamp=now, device_name="Tip"), "Status", "OK"))
            matrix = np.eye(4)
            matrix[:3, 3] = tip
            out.append(_with_status(pyigtl.TransformMessage(
                matrix, timestamp=now, device_name="TipToImage"), "TransformStatus", "OK"))
            self._last_tip_matrix = matrix
        else:
            out.append(_with_status(_NoPoints(timestamp=now, device_name="Tip"), "Status", "MISSING"))
            if self._last_tip_matrix is not None:  # lost on this frame
                out.append(_with_status(pyigtl.TransformMessage(
                    self._last_tip_matrix, timestamp=now, device_name="TipToImage"),
                    "TransformStatus", "MISSING"))
                self._last_tip_matrix = None
        target = e.get("target")
        if target:
            radius_mm = float(target.get("radius_mm") or 1.0)
            out.append(_with_status(pyigtl.PointMessage(
                positions=[ras(target["xy"])], names="Target", groups="sifluoro",
                rgba_colors=YELLOW, diameters=2.0 * radius_mm, owners="sifluoro",
                timestamp=now, device_name="Target"), "Status", "OK"))
            self._target_shown = True
        elif self._target_shown:  # gone (joint lost, another view): Slicer would keep it
            out.append(_with_status(_NoPoints(timestamp=now, device_name="Target"),
                                    "Status", "MISSING"))
            self._target_shown = False
        alerts = [a.get("message", a.get("kind")) for a in e.get("alerts", ())]
        for message in alerts:
            self._note_alert(message)
        state = {"index": e["index"], "t_s": e["t_s"], "contrast": event.contrast_state,
                 "tip_visible": bool(needle),
                 "tip_confidence": needle.get("confidence") if needle else None,
                 "end_on": bool(needle and needle.get("end_on")),
                 "target_visible": bool(target), "tip_to_target_mm": e.get("tip_to_target_mm"),
                 "tip_to_target_mm_iso": e.get("tip_to_target_mm_iso"),
                 "scale_unknown": bool(e.get("scale_unknown")),
                 **e["dose"], **event.analysis, "alerts": alerts,
                 "study_alerts": list(self._alerts)}
        out.append(pyigtl.StringMessage(json.dumps(state, separators=(",", ":")), timestamp=now,
                                        device_name="State"))
        if overlay_bgr is not None and self.image_every and self.frames % self.image_every == 0:
            rgb = np.ascontiguousarray(overlay_bgr[None, :, :, ::-1])
            out.append(pyigtl.ImageMessage(rgb, ijk_to_world_matrix=m, world_coordinate_system="ras",
                                           timestamp=now, device_name="Overlay"))
        return out

    def frame(self, frame: Frame, event: FrameEvent, overlay_bgr: np.ndarray | None) -> None:
        messages = self.messages(frame, event, overlay_bgr)
        if self.server.send(messages):
            self.frames_to_clients += 1
        self.frames += 1
        self.tips_sent += sum(1 for msg in messages
                              if msg.device_name == "Tip" and not isinstance(msg, _NoPoints))

    def alert(self, alert) -> None:
        """An alert as the engine raises it: also one raised between frames (frames lost in a
        damaged run) is in the next ``State``'s ``study_alerts``, not only at the end."""
        self._note_alert(alert.message)

    def _note_alert(self, message: str) -> None:
        if message not in self._alerts:
            self._alerts.append(message)

    def end(self, study, summary: dict, dose) -> None:
        """A last ``State``: :func:`study_end_state`."""
        self.server.send([pyigtl.StringMessage(
            json.dumps(study_end_state(summary), separators=(",", ":")), timestamp=time.time(),
            device_name="State")])
        log.info("OpenIGTLink: %d frames, %d tip messages", self.frames, self.tips_sent)
