"""Draw a frame for people: display windowing, joint line, target, needle, contrast, dose text.

Colours are BGR (OpenCV). Detections are drawn solid; ground truth (simulated studies only)
thin and dashed-looking in white, so the two can be compared by eye.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

COLOURS = {
    "joint": (255, 200, 0),
    "target": (0, 215, 255),
    "needle": (0, 255, 0),
    "truth": (255, 255, 255),
    "none": (200, 200, 200),
    "intra_articular": (0, 200, 0),
    "extravasation": (0, 165, 255),
    "vascular": (0, 0, 255),
}


_scratch = threading.local()


def _scratch_array(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A per-thread working array, reused: a fresh multi-megabyte array per frame costs more
    in page faults than the arithmetic on it. Never handed to callers."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = np.empty(shape, dtype)
        setattr(_scratch, name, buf)
    return buf


def display_u8(pixels: np.ndarray, photometric: str, *, exposed: np.ndarray | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Window stored values to 8 bits (1st-99.5th percentile of the exposed area), bone bright.

    The window comes from every 8th pixel of every 8th row; it is applied by two saturating
    OpenCV passes (subtract the low end, scale to 8 bits), about 0.3 ms at 1024².
    """
    sample = pixels[::8, ::8]
    if exposed is not None:
        inside = sample[exposed[::8, ::8]]
        sample = inside if inside.size else sample
    lo, hi = np.percentile(sample, [1.0, 99.5]) if sample.size else (0.0, 1.0)
    low = int(round(lo))
    if pixels.dtype == np.uint16:
        shifted = cv2.subtract(pixels, low, dst=_scratch_array("u16", pixels.shape, np.uint16))  # saturates at 0
    else:
        shifted = cv2.subtract(np.ascontiguousarray(pixels), low)
    # rounds and saturates at 255
    out = cv2.convertScaleAbs(shifted, dst=out, alpha=255.0 / max(hi - low, 1.0))
    if photometric == "MONOCHROME1":
        cv2.bitwise_not(out, dst=out)
    return out


def _pts(polyline) -> np.ndarray:
    return np.round(np.asarray(polyline, np.float64) * 16).astype(np.int32).reshape(-1, 1, 2)


def _font_scale(img) -> float:
    return max(0.42, img.shape[0] / 1200)


def _text(img, text, org, colour=(255, 255, 255), *, rows: tuple[int, int] | None = None):
    """Text on an opaque black band (over ``rows``, first and end, when given), so it reads on
    bone, on air and over the device's burned-in text alike: a translucent band let that text
    show through and the two interleave (user review s18 F28)."""
    scale = _font_scale(img)
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = org
    top, end = rows or (y - h - 3, y + base + 1)
    img[max(0, top):end, max(0, x - 3):x + w + 3] = 0
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def draw_overlay(pixels: np.ndarray, photometric: str, event: dict, *, truth: dict | None = None,
                 title: str | None = None, spacing_mm: float | None = None,
                 out: np.ndarray | None = None, stages: Collection[str] | None = None,
                 scale_unknown: bool = False, footer: str | None = None) -> np.ndarray:
    """An annotated BGR image of one frame and its event (docs/contract.md §3), optionally
    with truth.

    ``spacing_mm`` (detector pixel size) turns the target's acceptance radius into pixels.
    ``stages``: the image stages that ran (the summary's ``stages``); when given, a stage that
    did not run is written *not assessed* (no needle mark, contrast ``none``, would otherwise
    read as "looked, found nothing").
    ``scale_unknown``: the frame has no pixel spacing; the banner says why the joint line,
    target and distances, worked out in mm, are missing (user review s20 R4).
    ``footer``: a line at the bottom (a key frame sent to a PACS says there what it is not).
    ``out`` (rows, columns, 3) uint8, if given, receives the image (a caller drawing every
    frame reuses one, which saves a third of the cost at 1024²).
    """
    gray = display_u8(pixels, photometric, out=_scratch_array("u8", pixels.shape, np.uint8))
    img = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR, dst=out)
    line = max(1, img.shape[0] // 400)
    if truth:
        if truth.get("joint_polyline_xy"):
            cv2.polylines(img, [_pts(truth["joint_polyline_xy"])], False, COLOURS["truth"], 1,
                          cv2.LINE_AA, shift=4)
        if truth.get("target_xy"):
            x, y = truth["target_xy"]
            cv2.drawMarker(img, (int(round(x)), int(round(y))), COLOURS["truth"], cv2.MARKER_CROSS,
                           8 * line, 1, cv2.LINE_AA)
        if truth.get("tip_xy"):
            x, y = truth["tip_xy"]
            cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), 6 * line * 16,
                       COLOURS["truth"], 1, cv2.LINE_AA, shift=4)
    joint = event.get("joint")
    if joint:
        cv2.polylines(img, [_pts(joint["polyline_xy"])], False, COLOURS["joint"], line + 1,
                      cv2.LINE_AA, shift=4)
    target = event.get("target")
    if target:
        x, y = target["xy"]
        radius_px = (target["radius_mm"] / spacing_mm if spacing_mm and target.get("radius_mm")
                     else 10.0)
        cv2.circle(img, (int(round(x)), int(round(y))), max(2, int(round(radius_px))),
                   COLOURS["target"], line, cv2.LINE_AA)
        cv2.drawMarker(img, (int(round(x)), int(round(y))), COLOURS["target"], cv2.MARKER_CROSS,
                       6 * line, 1, cv2.LINE_AA)
    contrast = event.get("contrast") or {}
    if contrast.get("bbox_xyxy") and contrast.get("state", "none") != "none":
        x0, y0, x1, y1 = (int(round(v)) for v in contrast["bbox_xyxy"])
        cv2.rectangle(img, (x0, y0), (x1, y1), COLOURS[contrast["state"]], line, cv2.LINE_AA)
    needle = event.get("needle")
    if needle:
        x, y = needle["tip_xy"]
        direction = needle.get("direction_xy")
        if direction and not needle.get("end_on"):
            back = 15.0 / spacing_mm if spacing_mm else 40.0  # draw 15 mm of shaft
            x0, y0 = x - direction[0] * back, y - direction[1] * back
            cv2.line(img, (int(round(x0 * 16)), int(round(y0 * 16))),
                     (int(round(x * 16)), int(round(y * 16))), COLOURS["needle"], line, cv2.LINE_AA,
                     shift=4)
        if _uncertain_tip(needle):  # an open ring and a question, not the confident cross
            cv2.circle(img, (int(round(x)), int(round(y))), 6 * line, COLOURS["needle"], line,
                       cv2.LINE_AA)
            _text(img, "tip? (end-on)" if needle.get("end_on") else "tip? (low confidence)",
                  (int(round(x)) + 8 * line, int(round(y)) - 4 * line), COLOURS["needle"])
        else:
            cv2.drawMarker(img, (int(round(x)), int(round(y))), COLOURS["needle"],
                           cv2.MARKER_TILTED_CROSS, 10 * line, line + 1, cv2.LINE_AA)
    h = img.shape[0]
    step = int(cv2.getTextSize("Mg", cv2.FONT_HERSHEY_SIMPLEX, _font_scale(img), 1)[0][1] * 1.9)
    dose = event["dose"]

    def shown(key: str) -> float:  # the study's whole dose when exposures not stored add to it
        return dose.get(f"study_{key}", dose[key])

    state = event["contrast"]["state"]
    lines = [
        (title or f"#{event['index']}" + (f" (frame {event['frame']} of its run)"
                                          if event.get("frame") else "")
         + f"  t={event['t_s']:.2f} s", COLOURS["truth"]),
        (f"fluoro {shown('fluoro_time_s'):.1f} s   Ka,r {shown('air_kerma_mgy'):.2f} mGy   "
         f"DAP {shown('dap_gycm2'):.3f} Gy.cm2{' (study)' if 'study_air_kerma_mgy' in dose else ''}"
         + _DOSE_MARK.get(dose.get("dose_source"), "")
         + ("  (at least: runs of unknown dose left out)" if dose.get("runs_dose_unknown") else ""),
         COLOURS["truth"]),
    ]
    unassessed = [s for s in ("needle", "contrast") if stages is not None and s not in stages]
    if "contrast" not in unassessed:
        carried = ("contrast_skipped" in event.get("degraded_steps", ())
                   or "contrast" in [*event.get("skipped_stages", ()), *event.get("failed_stages", ())])
        lines.append((f"contrast: {state.replace('_', '-')}"
                      + (" (not updated this frame)" if carried else "")
                      # the state that forbids injecting: said on every frame it holds, not
                      # only on the one whose alert raised it (user review s20 R1)
                      + (": STOP, do not inject steroid" if state == "vascular" else ""),
                      COLOURS[state]))
    if unassessed:
        lines.append((f"not assessed: {', '.join(unassessed)}", COLOURS["none"]))
    if event.get("tip_to_target_mm") is not None:
        lines.append((_tip_to_target_text(event)
                      + (" (uncertain tip)" if needle and _uncertain_tip(needle) else ""),
                      COLOURS["target"]))
    elif (event.get("needle") is None and stages is not None and "needle" in stages
          and not event.get("dropped")
          and "needle" not in [*event.get("skipped_stages", ()), *event.get("failed_stages", ())]):
        # the stage looked and found no tip: not the same as a study it was not asked of
        lines.append(("needle: not found", COLOURS["none"]))
    if scale_unknown and (stages is None or "register" in stages):
        lines.append(("no pixel spacing in the header: no joint line, target or mm",
                      COLOURS["none"]))
    if joint and joint.get("doubled"):
        lines.append(("joint line doubled: rotate the C-arm a few degrees", COLOURS["joint"]))
    for alert in event.get("alerts", []):
        lines.append((f"ALERT: {alert.get('message', alert.get('kind'))}", COLOURS["vascular"]))
    below = cv2.getTextSize("Mg", cv2.FONT_HERSHEY_SIMPLEX, _font_scale(img), 1)[1] + 1
    for k, (text, colour) in enumerate(lines):
        # the bands join: no burned-in text peeks out between two lines
        _text(img, text, (8, step * (k + 1)), colour,
              rows=(step * k + below if k else 0, step * (k + 1) + below))
    bottom = h - 10
    if truth:
        _text(img, "white: ground truth (joint, target +, tip o)", (8, bottom), COLOURS["truth"])
        bottom -= step
    if footer:
        _text(img, footer, (8, bottom), COLOURS["target"])
    return img


# an estimate is shown as one (user review s20 R3: the console said [estimated], the overlay
# showed the same numbers bare)
_DOSE_MARK = {"estimated": "  (estimated)", "mixed": "  (partly estimated)",
              "none": "  (dose unknown)"}
UNCERTAIN_TIP_CONFIDENCE = 0.5  # under it (and every end-on dot) a tip is drawn as uncertain


def _uncertain_tip(needle: dict) -> bool:
    """A tip the radiologist should not read as sure: an end-on dot, or one of low confidence
    (user review s20 R2: a 0.34 end-on dot was drawn as the confident cross with its distance)."""
    return bool(needle.get("end_on")) or needle.get("confidence", 1.0) < UNCERTAIN_TIP_CONFIDENCE


def _tip_to_target_text(event: dict) -> str:
    """Tip to target with its plane named: at the isocentre (near the joint, as a PACS
    measures the key frames) when the geometry is known, else at the detector, larger by
    the magnification (user review s18 F17)."""
    at_detector = event["tip_to_target_mm"]
    at_iso = event.get("tip_to_target_mm_iso")
    if at_iso is None:
        return f"tip to target {at_detector:.1f} mm at the detector"
    return f"tip to target {at_iso:.1f} mm at the joint ({at_detector:.1f} at the detector)"


class OverlayWriter:
    """Annotated frames to PNG files (``DIR/00012.png`` by study index) and/or one MP4.

    The MP4 plays at the fluoroscopy's own pulse rate when the first frame's run knows it.
    """

    def __init__(self, png_dir: Path | None = None, mp4_path: Path | None = None, *,
                 stages: Collection[str] | None = None):
        self.stages = stages  # the image stages that ran, for draw_overlay
        self._image: np.ndarray | None = None   # reused: written out before the next frame
        self.png_dir = Path(png_dir) if png_dir else None
        self.mp4_path = Path(mp4_path) if mp4_path else None
        self._video = None
        self._video_shape: tuple[int, ...] = ()
        self._resized = False  # said once
        if self.png_dir:
            self.png_dir.mkdir(parents=True, exist_ok=True)
        if self.mp4_path:
            self.mp4_path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, frame, event: dict, *, truth: dict | None = None) -> np.ndarray:
        """Draw and write one frame; the returned image is valid until the next ``add``."""
        spacing = frame.pixel_spacing_xy_mm[0] if frame.pixel_spacing_xy_mm else None
        shape = frame.pixels.shape + (3,)
        if self._image is None or self._image.shape != shape:
            self._image = np.empty(shape, np.uint8)
        img = draw_overlay(frame.pixels, frame.photometric, event, truth=truth, spacing_mm=spacing,
                           out=self._image, stages=self.stages,
                           scale_unknown=spacing is None or bool(event.get("scale_unknown")))
        if self.png_dir:
            cv2.imwrite(str(self.png_dir / f"{event['index']:05d}.png"), img)
        if self.mp4_path:
            if self._video is None:
                # the rate frames are taken (a video grabbed below the pulse rate: not the pulses)
                t = frame.technique
                fps = (1000.0 / t.frame_time_ms if t.frame_time_ms else None) or t.pulse_rate_per_s or 7.5
                self._video = cv2.VideoWriter(str(self.mp4_path), cv2.VideoWriter_fourcc(*"mp4v"),
                                              fps, (img.shape[1], img.shape[0]))
                self._video_shape = img.shape
            self._video.write(self._fitted(img))
        return img

    def _fitted(self, img: np.ndarray) -> np.ndarray:
        """``img`` in the MP4's picture size: a run of another size (a new field or zoom) is
        scaled to fit and centred on black; OpenCV's writer dropped it (review s23 #8)."""
        height, width = self._video_shape[:2]
        if img.shape == self._video_shape:
            return img
        if not self._resized:
            log.warning("%s: frames of %dx%d are scaled into the video's %dx%d", self.mp4_path,
                        img.shape[1], img.shape[0], width, height)
            self._resized = True
        scale = min(width / img.shape[1], height / img.shape[0])
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
        fitted = np.zeros(self._video_shape, np.uint8)
        top, left = (height - size[1]) // 2, (width - size[0]) // 2
        fitted[top:top + size[1], left:left + size[0]] = cv2.resize(
            img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        return fitted

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None
