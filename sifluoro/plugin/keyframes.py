"""At study end: key frames with their overlays as Secondary Capture, and the RDSR, to the outbox.

Key frames are what a radiologist would keep: the last frame of every run (the last-image-hold
of each needle position), the frame where the contrast state changed, and frames on which an
alert fired. At most ``max_frames`` are kept; frames marked by contrast or alerts go first, then
the latest run ends.

Each key frame becomes a single-frame RGB Secondary Capture Image (built with highdicom's
``SCImage.from_ref_dataset``: patient and study attributes copied from the source image, never
invented), with BurnedInAnnotation ``YES`` (the overlay's text is in the pixels), ConversionType
``WSD`` and a SourceImageSequence naming the frame it was drawn on. The study's dose goes out as
the X-Ray Radiation Dose SR that :func:`sifluoro.dose.rdsr_write.write_rdsr` writes.
"""
from __future__ import annotations

import copy
import logging
import re
import tempfile
import warnings
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Mapping

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sifluoro.config import Settings
from sifluoro.dose.accumulate import DoseAccumulator
from sifluoro.dose.rdsr_write import SOFTWARE_VERSION, write_rdsr
from sifluoro.engine import FrameEvent
from sifluoro.errors import InputError
from sifluoro.model import Frame, Run, Study, Technique
from sifluoro.overlay import draw_overlay
from sifluoro.pipeline import continues
from sifluoro.plugin.outbox import Outbox

log = logging.getLogger(__name__)

SERIES_NUMBER = 998  # the RDSR is series 999
SERIES_DESCRIPTION = "sifluoro key frames (overlay burned in)"


@dataclass(frozen=True)
class KeyFrame:
    """A frame worth keeping, with its event and why it was kept."""

    frame: Frame
    event: Mapping
    reason: str


class KeyFrameSelector:
    """Collects key frames while a study goes (see the module docstring)."""

    def __init__(self, max_frames: int = 12):
        self.max_frames = max_frames
        # only what frames() can choose is held: the first marked, the last run ends
        self._marked: list[KeyFrame] = []
        self._run_ends: deque[KeyFrame] = deque(maxlen=max_frames)
        self._current: KeyFrame | None = None
        self._lead: Run | None = None  # the first run of the current chain of single frames
        self._contrast = "none"

    def add(self, frame: Frame, event: Mapping) -> None:
        current = self._current.frame.run if self._current is not None else None
        # a device's one-frame files chained into one run (pipeline.continues) end it at the
        # chain's end only: each passed for a run of its own (review s23 #7)
        if current is None or (current is not frame.run
                               and not continues(current, frame.run, self._lead)):
            if self._current is not None:
                self._run_ends.append(self._current)
            self._lead = frame.run
        self._current = KeyFrame(frame, event, "run end")
        reasons = []
        state = event["contrast"]["state"]
        if state != self._contrast:
            self._contrast = state
            reasons.append(f"contrast {state.replace('_', '-')}")
        reasons += [f"alert {a.get('kind', '')}".strip() for a in event.get("alerts", ())]
        if reasons and len(self._marked) < self.max_frames:
            self._marked.append(KeyFrame(frame, event, ", ".join(reasons)))

    def frames(self) -> list[KeyFrame]:
        """The key frames in acquisition order."""
        run_ends = [*self._run_ends, *([self._current] if self._current else [])]
        marked = self._marked[: self.max_frames]
        taken = {k.event["index"] for k in marked}
        room = self.max_frames - len(marked)
        ends = [k for k in run_ends if k.event["index"] not in taken]
        chosen = marked + (ends[-room:] if room > 0 else [])
        return sorted(chosen, key=lambda k: k.event["index"])


#: Type 2 date and time attributes a key frame copies from its source; highdicom refuses
#: one that is not a valid DA/TM ("00000000", "1950-01-01", "10:30:00")
_DATES = ("PatientBirthDate", "StudyDate")
_TIMES = ("StudyTime",)
_TM = re.compile(r"^([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?$")


def _without_refused_values(ref: Dataset) -> Dataset:
    """``ref`` with the values highdicom would refuse left empty (they are Type 2): a
    PatientSex outside M/F/O ('U'), a date or time that is not a valid DA/TM. The tag is
    logged, never its value (a birth date identifies)."""
    bad = []
    if str(ref.get("PatientSex", "")) not in ("", "M", "F", "O"):
        bad.append("PatientSex")
    for keyword in _DATES:
        text = str(ref.get(keyword, "") or "").strip()
        if text and not _valid_date(text):
            bad.append(keyword)
    for keyword in _TIMES:
        text = str(ref.get(keyword, "") or "").strip()
        if text and not _TM.match(text):
            bad.append(keyword)
    if not bad:
        return ref
    ref = copy.copy(ref)
    for keyword in bad:
        setattr(ref, keyword, "")
        if keyword != "PatientSex":
            log.info("key frames: the source's %s is not a valid DICOM value; left empty", keyword)
    return ref


def _valid_date(text: str) -> bool:
    if not re.fullmatch(r"\d{8}", text):
        return False
    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def key_frame_title(key: KeyFrame) -> str:
    """The title burned into a key frame: the study index and the frame of its run (as the live
    overlay's), not the index as a frame number."""
    event = key.event
    return (f"{key.reason}: #{event['index']} (frame {key.frame.frame_number} of its run)  "
            f"t={event['t_s']:.2f} s")


#: the source's patient attributes a key frame keeps beside highdicom's: the ID's issuer (a PACS
#: with several issuers) and de-identification (user review s20 X1, X6)
CARRIED_FROM_SOURCE = ("IssuerOfPatientID", "OtherPatientIDsSequence", "PatientIdentityRemoved",
                       "DeidentificationMethod", "DeidentificationMethodCodeSequence")
#: on every key frame, burned in and in ImageComments: in a clinical PACS a burned-in distance
#: reads as a measurement (user review s20 X4)
NOT_VALIDATED = "sifluoro guidance, not validated: not a measurement"


def key_frame_sc(key: KeyFrame, ref: Dataset, *, series_instance_uid: str, instance_number: int,
                 sop_instance_uid: str | None = None, stages=None) -> Dataset:
    """The key frame with its overlay as an RGB Secondary Capture Image (with file meta).

    Parameters
    ----------
    key : KeyFrame
    ref : Dataset
        The header of the frame's source instance (patient, study and orientation come from it).
    stages : collection of str, optional
        The image stages that ran; the others are written *not assessed* on the image.
    """
    frame, event = key.frame, dict(key.event)
    spacing = frame.pixel_spacing_xy_mm[0] if frame.pixel_spacing_xy_mm else None
    title = key_frame_title(key)
    rgb = np.ascontiguousarray(draw_overlay(frame.pixels, frame.photometric, event, title=title,
                                            spacing_mm=spacing, stages=stages,
                                            scale_unknown=bool(event.get("scale_unknown")),
                                            footer=NOT_VALIDATED)[..., ::-1])
    ref = _without_refused_values(ref)
    orientation = [str(v) for v in ref.get("PatientOrientation", None) or []]
    known = len(orientation) == 2 and all(orientation)
    laterality = str(ref.get("Laterality") or ref.get("ImageLaterality") or "")
    with warnings.catch_warnings():
        # highdicom's warning about an odd person name quotes the name: none in logs
        warnings.filterwarnings("ignore", message=".*unlikely to represent", category=UserWarning)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref, rgb, "RGB", 8, "PATIENT",
            series_instance_uid=series_instance_uid, series_number=SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid or generate_uid(), instance_number=instance_number,
            manufacturer="sifluoro", manufacturer_model_name="sifluoro",
            software_versions=SOFTWARE_VERSION, series_description=SERIES_DESCRIPTION,
            patient_orientation=tuple(orientation) if known else ("L", "F"),
            laterality=laterality if laterality in ("L", "R") else None,
            transfer_syntax_uid=ExplicitVRLittleEndian)
    # Type 2 / 2C: empty when the source does not say (never guessed); the SI joint is paired
    if not known:
        sc.PatientOrientation = None
    if "Laterality" not in sc:
        sc.Laterality = None
    for keyword in CARRIED_FROM_SOURCE:  # highdicom's patient module leaves these out
        if keyword in ref and keyword not in sc and ref[keyword].value not in (None, ""):
            sc[keyword] = ref[keyword]
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    # once lossy, always said (PS3.3 C.7.6.1.1.5): a frame drawn from a lossy source is one
    sc.LossyImageCompression = "01" if str(ref.get("LossyImageCompression", "")) == "01" else "00"
    if sc.LossyImageCompression == "01":
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if ref.get(keyword):
                sc[keyword] = ref[keyword]
    sc.ImageComments = f"sifluoro key frame ({key.reason}); {NOT_VALIDATED}"
    sc.DerivationDescription = ("overlay of sifluoro guidance (joint line, target, needle tip, "
                                "contrast state, dose counters) burned into the frame")
    source = Dataset()
    source.ReferencedSOPClassUID = frame.run.sop_class_uid or ref.SOPClassUID
    source.ReferencedSOPInstanceUID = frame.run.sop_instance_uid
    if frame.run.n_frames > 1:
        source.ReferencedFrameNumber = frame.frame_number
    sc.SourceImageSequence = [source]
    _calibrate_at_isocenter(sc, frame.run.technique)
    return sc


def _calibrate_at_isocenter(sc: Dataset, tech: Technique) -> None:
    """Pixel Spacing at the isocenter (the Basic Pixel Spacing Calibration Macro of the SC Image
    module), so that a PACS measures the key frame in mm near the joint: the detector's
    ImagerPixelSpacing times DistanceSourceToIsocenter / DistanceSourceToDetector, as the
    source's own ERMF would. Left out when the geometry is not known: a spacing at the detector
    would measure the joint about 1.4 times too large."""
    spacing, sid_mm, sod_mm = (tech.imager_pixel_spacing_xy_mm, tech.sid_mm,
                               tech.source_to_isocenter_mm)
    if not (spacing and sid_mm and sod_mm and 0 < sod_mm <= sid_mm):
        return
    scale = sod_mm / sid_mm
    sc.PixelSpacing = [f"{spacing[1] * scale:.10g}", f"{spacing[0] * scale:.10g}"]  # row\column
    sc.PixelSpacingCalibrationType = "GEOMETRY"
    # LO: at most 64 characters
    sc.PixelSpacingCalibrationDescription = (
        f"isocenter: ImagerPixelSpacing x SOD/SID {sod_mm:.0f}/{sid_mm:.0f} mm")


class StudyExporter:
    """A live sink: collects key frames, and at study end puts the SCs and the RDSR into the
    outbox (and calls ``on_queued``, e.g. to wake a sender)."""

    def __init__(self, outbox: Outbox, *, settings: Settings | None = None, max_frames: int = 12,
                 on_queued=None):
        self.outbox = outbox
        self.settings = settings or Settings()
        self.selector = KeyFrameSelector(max_frames)
        self.on_queued = on_queued
        self.queued: list[Path] = []
        self.errors: list[str] = []  # what could not be made (the command's exit status)

    def start(self, study: Study) -> None:
        pass

    def frame(self, frame: Frame, event: FrameEvent, overlay_bgr: np.ndarray | None = None) -> None:
        self.selector.add(frame, event.event)

    def end(self, study: Study, summary: dict, dose: DoseAccumulator | None) -> None:
        if dose is None:  # no frame processed: nothing to report
            return
        self.queued = export_study(self.outbox, study, dose, self.selector.frames(),
                                   settings=self.settings, stages=summary.get("stages"),
                                   errors=self.errors)
        if self.on_queued is not None:
            self.on_queued()


def export_study(outbox: Outbox, study: Study, dose: DoseAccumulator, keys: list[KeyFrame], *,
                 settings: Settings | None = None, stages=None,
                 errors: list[str] | None = None) -> list[Path]:
    """Put the study's RDSR and the key frames (as SC) into ``outbox``; return their paths.
    ``stages``: the image stages that ran (the summary's), written on the key frames. No RDSR
    when the device's own report gives the dose of every run (the C-arm sends that one);
    otherwise the RDSR reports the runs that report does not cover, and leaves its events to it
    (see :meth:`DoseAccumulator.own_events`), so a registry holding both counts each once.

    The RDSR goes first (the dose record matters most). What cannot be made (the RDSR, a key
    frame) is logged and described in ``errors`` and the rest is still queued; without
    ``errors`` an RDSR that cannot be made raises."""
    settings = settings or Settings()
    queued = []
    if dose.device_events and not dose.own_events():
        # every counted run's dose is the device's own report's, which the C-arm sends to the
        # PACS itself: sifluoro's would only repeat it
        log.info("study end: the device's RDSR gives the dose of every run; no second RDSR queued")
    else:
        queued += _queue_rdsr(outbox, study, dose, settings, errors)
    headers: dict[str, Dataset] = {}
    series_uid = generate_uid()
    for number, key in enumerate(keys, start=1):
        path = key.frame.run.path
        try:
            if path not in headers:
                try:
                    # force: a dataset without the Part 10 header, as the reader takes it
                    headers[path] = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                except Exception as exc:
                    raise InputError(f"cannot be read again for the key frame's header ({exc})",
                                     path=path) from exc
            queued.append(outbox.put(key_frame_sc(key, headers[path],
                                                  series_instance_uid=series_uid,
                                                  instance_number=number, stages=stages)))
        except Exception as exc:  # one key frame lost, not the others
            # the exception's text may quote header values (a patient's name): its type only
            message = (f"key frame {number} (frame {key.event['index']}, {key.reason}): "
                       f"{type(exc).__name__}")
            log.warning("study end: %s", message)
            if errors is not None:
                errors.append(message)
    log.info("study end: %d file(s) queued in %s", len(queued), outbox.folder)
    return queued


def _queue_rdsr(outbox: Outbox, study: Study, dose: DoseAccumulator, settings: Settings,
                errors: list[str] | None) -> list[Path]:
    try:
        with tempfile.TemporaryDirectory(prefix="sifluoro-rdsr-") as tmp:
            rdsr = write_rdsr(study, dose, Path(tmp) / "rdsr.dcm", settings=settings.dose)
            return [outbox.put_file(rdsr)] if rdsr is not None else []
    except Exception as exc:
        if errors is None:
            raise
        log.error("study end: the RDSR could not be queued (%s)", type(exc).__name__)
        errors.append(f"RDSR: {type(exc).__name__}")
        return []
