"""Header parsing: one pass over a dataset's attributes into plain, unit-named fields.

Handles legacy XA/RF/SC attributes and the functional groups of Enhanced XA/XRF (per-frame
first, then shared, then top level). Odd values of optional attributes are ignored with a log
line; missing or unusable mandatory ones raise a typed ``InputError`` naming the tag.
"""
from __future__ import annotations

import contextvars
import logging
import math
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import EnhancedXAImageStorage, EnhancedXRFImageStorage
from pydicom.valuerep import DA, TM

from sifluoro.acquire import geometry
from sifluoro.dose.exposure_dose import read_exposure_doses, run_technique
from sifluoro.dicom_time import parse_dt, utc_offset, wall, wall_seconds, with_offset
from sifluoro.dose.units import MAX_PLAUSIBLE, MAX_PULSE_WIDTH_MS
from sifluoro.errors import (DamagedPixelDataError, InputError, MissingAttributeError,
                             UnsupportedDicomError, UnsupportedPixelDataError)
from sifluoro.model import Device, Run, Technique

log = logging.getLogger(__name__)


def tag_name(keyword: str) -> str:
    """``"(0018,1063) FrameTime"`` for ``"FrameTime"``."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


@dataclass(frozen=True)
class HeaderFields:
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    photometric: str
    start_s: float | None
    frame_offsets_s: tuple[float, ...]
    frame_intervals_ms: tuple[float, ...]
    technique: Technique
    device: Device
    laterality: str | None
    series_number: int | None
    instance_number: int | None
    pixel_intensity_sign: int | None
    pixel_intensity_relationship: str | None
    # (tag, reason, error class) why the frames cannot be decoded though the header is usable
    # (their dose still counts)
    pixels_refused: tuple[str, str, type] | None = None
    started_at: datetime | None = None  # ``start_s`` as the header's date and time
    timing_unknown: bool = False  # no usable frame timing (``frame_intervals_ms`` are 0)
    modality_lut_inverts: bool = False  # a negative RescaleSlope or a falling Modality LUT


#: the largest possible value of each amount, in its DICOM unit (:data:`MAX_PLAUSIBLE`)
AMOUNT_MAX = {
    "KVP": MAX_PLAUSIBLE["voltage_kv"],
    "XRayTubeCurrentInmA": MAX_PLAUSIBLE["current_ma"],
    "XRayTubeCurrent": MAX_PLAUSIBLE["current_ma"],
    "AveragePulseWidth": MAX_PULSE_WIDTH_MS,
    "ExposureTimeInms": MAX_PLAUSIBLE["time_ms"],
    "ExposureTime": MAX_PLAUSIBLE["time_ms"],
    "ExposureInmAs": MAX_PLAUSIBLE["charge_mas"],
    "Exposure": MAX_PLAUSIBLE["charge_mas"],
    "DistanceSourceToDetector": MAX_PLAUSIBLE["length_mm"],
    "DistanceSourceToIsocenter": MAX_PLAUSIBLE["length_mm"],
    "DistanceSourceToPatient": MAX_PLAUSIBLE["length_mm"],
    "IntensifierSize": MAX_PLAUSIBLE["length_mm"],
    "ImageAndFluoroscopyAreaDoseProduct": MAX_PLAUSIBLE["dap_gycm2"] * 10.0,  # dGy·cm²
    "AcquiredImageAreaDoseProduct": MAX_PLAUSIBLE["dap_gycm2"] * 10.0,
    "EntranceDoseInmGy": MAX_PLAUSIBLE["dose_mgy"],
    "EntranceDose": MAX_PLAUSIBLE["dose_mgy"] / 100.0,  # dGy
}


class _Lookup:
    """Attribute lookup across per-frame, shared functional groups and the top level;
    ``path`` names the file in warnings."""

    def __init__(self, ds: Dataset, path: str = ""):
        self.ds, self.path = ds, path
        self._refused: set[str] = set()  # amounts said to be refused (said once per file)
        self.shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        try:
            self.per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
        except Exception:  # a damaged sequence is treated as absent
            self.per_frame = []

    def raw(self, keyword: str, frame: int | None = 0) -> Any:
        """Per-frame group of ``frame``, then shared groups, then the top level; with
        ``frame=None`` the top level only."""
        places = []
        if frame is not None and frame < len(self.per_frame):
            places.append(self.per_frame[frame])
        if frame is not None and self.shared is not None:
            places.append(self.shared)
        for group in places:
            for elem in _safe_elements(group):
                if elem.VR == "SQ" and elem.value:
                    item = elem.value[0]
                    if keyword in item:
                        return _value(item, keyword)
        return _value(self.ds, keyword)

    def float(self, keyword: str, frame: int | None = 0, index: int | None = None) -> float | None:
        value = self.raw(keyword, frame)
        if value is None or value == "":
            return None
        try:
            if index is not None or _is_multi(value):
                value = list(value)[index or 0]
            number = float(value)
        except (TypeError, ValueError, IndexError):
            self._not_a_number(keyword, value)
            return None
        return number if math.isfinite(number) else None

    def _not_a_number(self, keyword: str, value: Any) -> None:
        """Said once per attribute, naming the file: a kVp of "78 kV" made the run's dose
        unknown, and a FrameTime of "133,3" its frames refused, with no word on why."""
        if keyword not in self._refused:
            self._refused.add(keyword)
            shown = str(value if not _is_multi(value) else "\\".join(map(str, value)))
            log.warning("%s: ignoring %s = %r: not a number", self.path or "header",
                        tag_name(keyword), shown[:32])

    def amount(self, keyword: str, frame: int | None = 0) -> float | None:
        """A value that cannot be negative (a dose, a tube load, a time, a distance) nor above
        what X-ray can give (:data:`AMOUNT_MAX`): one outside is ignored with a warning naming
        the file and the attribute (a dose from it would be negative, or absurd)."""
        number = self.float(keyword, frame)
        if number is None:
            return None
        most = AMOUNT_MAX.get(keyword, math.inf)
        if number < 0 or number > most:
            if keyword not in self._refused:
                self._refused.add(keyword)
                log.warning("%s: ignoring %s = %g: %s", self.path or "header", tag_name(keyword),
                            number, "negative" if number < 0 else
                            f"above {most:g}, not a possible value")
            return None
        return number

    def floats(self, keyword: str, frame: int | None = 0) -> tuple[float, ...] | None:
        value = self.raw(keyword, frame)
        if value is None or value == "":
            return None
        try:
            values = tuple(float(v) for v in (value if _is_multi(value) else [value]))
        except (TypeError, ValueError):
            self._not_a_number(keyword, value)
            return None
        return values if all(math.isfinite(v) for v in values) else None

    def text(self, keyword: str, frame: int | None = 0) -> str:
        value = self.raw(keyword, frame)
        if value is None:
            return ""
        if _is_multi(value):
            value = "\\".join(str(v) for v in value)
        return str(value).strip()


def _safe_elements(item: Dataset):
    try:
        return list(item)  # iteration converts raw elements
    except Exception:
        return []


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    try:
        seq = ds.get(keyword)
        return seq[0] if seq else None
    except Exception:
        return None


def _value(ds: Dataset, keyword: str) -> Any:
    try:
        return ds.get(keyword)
    except Exception:  # an undecodable value is treated as absent
        log.info("ignoring undecodable %s", tag_name(keyword))
        return None


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _required_text(look: _Lookup, keyword: str, path: str) -> str:
    value = look.text(keyword, frame=None)
    if not value:
        raise MissingAttributeError(f"{keyword} is missing or empty; the instance cannot be "
                                    "identified", path=path, tag=tag_name(keyword))
    return value


def _required_int(look: _Lookup, keyword: str, path: str, allowed: range | tuple) -> int:
    raw = look.raw(keyword, frame=None)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise MissingAttributeError(f"{keyword} is missing or not a number ({raw!r})", path=path,
                                    tag=tag_name(keyword)) from None
    if value not in allowed:
        raise UnsupportedDicomError(f"{keyword} = {value} is outside what sifluoro reads "
                                    f"({allowed})", path=path, tag=tag_name(keyword))
    return value


def parse(ds: Dataset, path: str, *, pixel_bytes: int | None = None,
          fragments: int | None = None, frames_held: int | None = None,
          video: bool = False) -> HeaderFields:
    """Read every header field a run needs; raise a typed error for what is unusable.

    ``pixel_bytes`` (native pixel data's length) or ``fragments`` (encapsulated pixel data's
    fragment count), when known, bound (0028,0008) NumberOfFrames before anything is built per
    frame; it is always capped at :data:`MAX_FRAMES`. ``frames_held``: how many frames those
    fragments hold, when their syntax or offset table tells (see
    ``dicom_reader._fragment_count``): the frame count when NumberOfFrames is absent.
    ``video``: the pixel data is a video stream (MPEG-2/H.264/HEVC), whose colour frames are
    read as their 8-bit luma.
    """
    look = _Lookup(ds, path)
    sop_uid = _required_text(look, "SOPInstanceUID", path)
    study_uid = _required_text(look, "StudyInstanceUID", path)
    # values sifluoro cannot read: the frames are refused, the run's exposure still happened
    # (its dose counted from the header, as lost frames)
    pixels_refused = None
    try:
        rows = _required_int(look, "Rows", path, range(1, 65536))
        columns = _required_int(look, "Columns", path, range(1, 65536))
    except InputError as exc:
        # no frame can be read without its size; the size stays unknown (0), so nothing is
        # taken from the image's area or the pixel data's length
        rows = columns = 0
        pixels_refused = (exc.tag, exc.reason, DamagedPixelDataError)
    bits_known = True
    try:
        bits_allocated = _required_int(look, "BitsAllocated", path, (8, 16))
        bits_stored = _required_int(look, "BitsStored", path, range(1, bits_allocated + 1))
    except InputError as exc:
        # no frame can be read, but the image's area (the field's DAP) is still known; the
        # pixel data's length says nothing without the bytes per pixel
        bits_allocated = bits_stored = 16
        bits_known = False
        pixels_refused = pixels_refused or (exc.tag, exc.reason, DamagedPixelDataError)
    samples = look.raw("SamplesPerPixel", frame=None)
    if video:  # YBR_PARTIAL_420 by the standard: its luma, 8 bits, is the grey frame
        bits_allocated = bits_stored = 8
    elif samples not in (None, 1):
        pixels_refused = (tag_name("SamplesPerPixel"),
                          f"SamplesPerPixel = {samples}: only grayscale is read",
                          UnsupportedPixelDataError)
    try:
        if not video:  # the codec's 8 bits, whatever the header says
            _check_high_bit(look, bits_stored, path)
    except InputError as exc:
        pixels_refused = pixels_refused or (exc.tag, exc.reason, UnsupportedPixelDataError)
    if look.raw("PixelRepresentation", frame=None) not in (None, 0):
        pixels_refused = pixels_refused or (tag_name("PixelRepresentation"),
                                            "signed pixel data is not X-ray projection data",
                                            UnsupportedPixelDataError)
    photometric = look.text("PhotometricInterpretation", frame=None)
    if video:
        photometric = "MONOCHROME2"
    elif photometric not in ("MONOCHROME1", "MONOCHROME2"):
        pixels_refused = pixels_refused or (
            tag_name("PhotometricInterpretation"),
            f"PhotometricInterpretation {photometric or 'missing'}: only MONOCHROME1/2 are read",
            UnsupportedPixelDataError)
        photometric = "MONOCHROME2"  # no frame is shown; the run keeps a valid value
    if rows * columns > MAX_FRAME_PIXELS:
        # a header's size drives every frame-sized buffer (decoding, the stages' warm-up): a
        # few KB of RLE could claim gigabytes. Refused as frames; the exposures still counted
        pixels_refused = pixels_refused or (
            tag_name("Rows"), f"a {columns}x{rows} frame is larger than sifluoro shows "
            f"({MAX_FRAME_PIXELS} pixels, 4096x4096)", UnsupportedPixelDataError)
    frame_bytes = rows * columns * (bits_allocated // 8) if bits_known else 0
    if not frame_bytes:  # the size unknown: the header's NumberOfFrames alone
        frame_bytes, pixel_bytes = 1, None
    declared = _number_of_frames(look, path, frame_bytes, pixel_bytes, fragments, frames_held)
    try:
        n_frames = _frames_present(declared, frame_bytes, pixel_bytes, fragments, path,
                                   frames_held)
    except DamagedPixelDataError as exc:
        # not one whole frame (cut before its first, empty pixel data): nothing to show, but
        # the header's frames were exposed; refusing the instance lost their dose and made
        # senders such as storescu stop before the rest of the study (review s22 F3)
        n_frames = _frames_present(declared, frame_bytes, None, None, path)
        pixels_refused = pixels_refused or (exc.tag, exc.reason, DamagedPixelDataError)
    timing_unknown = False
    try:
        offsets_s, intervals_ms, start = _timing(look, n_frames, path)
    except InputError as exc:
        # the frames cannot be placed in time, but they were exposed: refused as frames, their
        # dose counted (as lost, from the header); the time each stands for is unknown
        offsets_s, intervals_ms, start = (0.0,) * n_frames, (0.0,) * n_frames, run_start(look)
        timing_unknown = True
        pixels_refused = pixels_refused or (
            exc.tag, f"{exc.reason}; its fluoroscopy time is unknown and not counted",
            DamagedPixelDataError)
    technique = _technique(look, n_frames, rows, columns, intervals_ms, path)
    return HeaderFields(
        sop_instance_uid=sop_uid,
        series_instance_uid=look.text("SeriesInstanceUID", None),
        study_instance_uid=study_uid,
        modality=look.text("Modality", None),
        rows=rows,
        columns=columns,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        photometric=photometric,
        start_s=None if start is None else wall_seconds(start),  # runs in wall-clock order
        started_at=start,
        frame_offsets_s=offsets_s,
        frame_intervals_ms=intervals_ms,
        technique=technique,
        device=Device(look.text("Manufacturer", None), look.text("ManufacturerModelName", None),
                      look.text("DeviceSerialNumber", None), look.text("StationName", None)),
        laterality=(look.text("ImageLaterality", 0) or look.text("Laterality", None) or None),
        series_number=_int_or_none(look.raw("SeriesNumber", None)),
        instance_number=_int_or_none(look.raw("InstanceNumber", None)),
        pixel_intensity_sign=_int_or_none(look.raw("PixelIntensityRelationshipSign")),
        pixel_intensity_relationship=look.text("PixelIntensityRelationship") or None,
        pixels_refused=pixels_refused,
        timing_unknown=timing_unknown,
        # a video stream's frames are display pixels already
        modality_lut_inverts=not video and _modality_lut_inverts(look, path),
    )


def _modality_lut_inverts(look: _Lookup, path: str) -> bool:
    """Whether the Modality LUT (0028,3000) or rescale (0028,1053) turns stored values
    round before display: the photometric interpretation applies to its output, so the stored
    values show bone the other way (a viewer applies it; the stages read stored values). Only
    its direction is used; a LUT that is not monotonic is said, as its shape is not applied."""
    if look.ds.get("ModalityLUTSequence"):
        try:  # pydicom reads the table (US or OW, its descriptor's first mapped value)
            item = look.ds.ModalityLUTSequence[0]
            first, entries = int(item.LUTDescriptor[1]), int(item.LUTDescriptor[0]) or 65536
            table = apply_modality_lut(np.arange(first, first + entries), look.ds).astype(float)
            steps = np.diff(table)
        except Exception:  # an unreadable LUT: said below as not applied
            steps = np.zeros(0)
        if steps.size and (np.all(steps >= 0) or np.all(steps <= 0)) and steps.any():
            return bool(steps.sum() < 0)
        log.warning("%s: %s is not a rising or falling table: not applied (stored values are "
                    "read as they are)", path, tag_name("ModalityLUTSequence"))
        return False
    slope = look.float("RescaleSlope")  # Enhanced XA/XRF: in Pixel Value Transformation
    return slope is not None and slope < 0


#: set while a dataset is parsed a second time (:func:`parse_again`): its warnings were said
_PARSED_BEFORE = contextvars.ContextVar("sifluoro_header_parsed_before", default=False)


class _SaidOnce(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _PARSED_BEFORE.get()


for _logger in (log, geometry.log):
    _logger.addFilter(_SaidOnce())


def parse_again(ds: Dataset, path: str, **options) -> HeaderFields:
    """:func:`parse` of a dataset already parsed (with other options): the warnings about its
    attributes, said then, are not said twice."""
    token = _PARSED_BEFORE.set(True)
    try:
        return parse(ds, path, **options)
    finally:
        _PARSED_BEFORE.reset(token)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


#: SOP classes whose Multi-frame Module is mandatory: NumberOfFrames is Type 1
ENHANCED_SOP_CLASSES = {EnhancedXAImageStorage: "Enhanced XA", EnhancedXRFImageStorage: "Enhanced XRF"}


def _number_of_frames(look: _Lookup, path: str, frame_bytes: int,
                      pixel_bytes: int | None, fragments: int | None = None,
                      frames_held: int | None = None) -> int:
    """NumberOfFrames; absent, 1 (a single-frame instance), except in an Enhanced XA/XRF that
    holds more than one frame, where it is Type 1: said missing, rather than taken as 1 and
    the pixel data's size said not to match."""
    raw = look.raw("NumberOfFrames", frame=None)
    if raw in (None, ""):
        enhanced = ENHANCED_SOP_CLASSES.get(look.text("SOPClassUID", None))
        if enhanced and (len(look.per_frame) > 1
                         or (pixel_bytes is not None and pixel_bytes >= 2 * frame_bytes)):
            held = (f"{len(look.per_frame)} per-frame functional groups" if len(look.per_frame) > 1
                    else f"pixel data of {pixel_bytes // frame_bytes} frames")
            raise MissingAttributeError(f"NumberOfFrames is missing or empty, though the "
                                        f"instance has {held}; it is Type 1 in {enhanced}",
                                        path=path, tag=tag_name("NumberOfFrames"))
        if enhanced:
            log.warning("%s: %s is missing (Type 1 in %s): one frame", path,
                        tag_name("NumberOfFrames"), enhanced)
        elif fragments is not None and fragments >= 2:
            if frames_held and frames_held >= 2:
                log.warning("%s: %s is missing, but the pixel data holds %d frames",
                            path, tag_name("NumberOfFrames"), frames_held)
                return frames_held
            if not frames_held:  # a frame may be split into fragments, whose count is none
                log.warning("%s: %s is missing, but the pixel data holds %d fragments: one "
                            "frame is read, and the run's dose may be short of frames the "
                            "header does not count", path, tag_name("NumberOfFrames"), fragments)
        return 1
    try:
        n = int(raw)
    except (TypeError, ValueError):
        raise MissingAttributeError(f"NumberOfFrames is not a number ({raw!r})", path=path,
                                    tag=tag_name("NumberOfFrames")) from None
    if n < 1:
        raise MissingAttributeError(f"NumberOfFrames = {n}: the instance holds no frames",
                                    path=path, tag=tag_name("NumberOfFrames"))
    return n


#: the largest frame read (Rows x Columns): X-ray angiography and fluoroscopy detectors
#: give at most about 2500 x 2500
MAX_FRAME_PIXELS = 4096 * 4096

#: the most frames one instance may declare (55 min at 30 frames/s, far beyond any run): a
#: count read from a (network) header is trusted no further, as per-frame lists are built from it
MAX_FRAMES = 100_000


def _frames_present(n: int, frame_bytes: int, pixel_bytes: int | None,
                    fragments: int | None, path: str, frames_held: int | None = None) -> int:
    """NumberOfFrames bounded by what the pixel data holds (every native frame takes
    ``frame_bytes``, every encapsulated frame at least one fragment): a count above it is a
    header error, and the frames present are used, with a warning (refusing the run lost its
    dose). Encapsulated pixel data that seems to hold more frames than the count
    (``frames_held``) is said: the count is used (the header times that many frames; a
    trailing fragment may be padding), and if it is wrong the others' dose is missing. None
    present, or more than :data:`MAX_FRAMES`, is refused."""
    tag = tag_name("NumberOfFrames")
    held = None
    if frames_held is not None and frames_held > n:
        log.warning("%s: %s = %d, but the encapsulated pixel data seems to hold %d frames: %d "
                    "are read; if the count is wrong, the others and their dose are not", path,
                    tag, n, frames_held, n)
    if pixel_bytes is not None and n > pixel_bytes // frame_bytes:
        held = pixel_bytes // frame_bytes
        where = f"the pixel data ({pixel_bytes} bytes) holds {held} frame(s) of {frame_bytes} bytes"
    elif fragments is not None and n > fragments:
        held = fragments
        where = f"the encapsulated pixel data holds {fragments} fragment(s), at least one a frame"
    if held is not None:
        if held < 1:
            raise DamagedPixelDataError(f"NumberOfFrames = {n}, but {where}; re-export the run",
                                        path=path, tag=tag)
        if pixel_bytes is not None and pixel_bytes % frame_bytes > 1:
            # part of a frame too: a wrong Rows or Columns cannot be told from a partial frame,
            # so the native reader shows none (dicom_reader._native_length_mismatch)
            log.warning("%s: %s = %d, but %s and part of another", path, tag, n, where)
        else:
            log.warning("%s: %s = %d, but %s: the %d frame(s) present are used", path, tag, n,
                        where, held)
        n = held
    if n > MAX_FRAMES:
        raise UnsupportedDicomError(f"NumberOfFrames = {n} is more than sifluoro reads in one "
                                    f"instance ({MAX_FRAMES}); split the run", path=path, tag=tag)
    return n


def _check_high_bit(look: _Lookup, bits_stored: int, path: str) -> None:
    """Stored values are read from the low BitsStored bits: HighBit must be BitsStored - 1
    (absent is taken as that)."""
    raw = look.raw("HighBit", frame=None)
    if raw in (None, ""):
        return
    try:
        high_bit = int(raw)
    except (TypeError, ValueError):
        raise MissingAttributeError(f"HighBit is not a number ({raw!r})", path=path,
                                    tag=tag_name("HighBit")) from None
    if high_bit != bits_stored - 1:
        raise UnsupportedDicomError(f"HighBit = {high_bit} with BitsStored = {bits_stored}: only "
                                    f"values stored in the low bits (HighBit = {bits_stored - 1}) "
                                    "are read; re-export the run", path=path,
                                    tag=tag_name("HighBit"))


def _datetime(look: _Lookup, dt_kw: str | None, date_kw: str | None, time_kw: str | None,
              frame: int | None = None) -> datetime | None:
    offset = utc_offset(look.text("TimezoneOffsetFromUTC", None))
    if dt_kw:
        text = look.text(dt_kw, frame)
        if text:
            try:
                return parse_dt(text, offset)
            except ValueError:
                log.info("ignoring unusable %s", tag_name(dt_kw))
    if time_kw:
        time_text = look.text(time_kw, frame)
        date_text = look.text(date_kw, frame) if date_kw else ""
        # a time without its date: the image's own ContentDate, else the study's date, a day
        # on when the time is before the study's (a study across midnight)
        next_day = False
        if not date_text:
            date_text = look.text("ContentDate", None)
        if not date_text:
            date_text = look.text("StudyDate", None) or "19700101"
            study_time = look.text("StudyTime", None)
            next_day = bool(study_time and time_text and _before(time_text, study_time))
        if time_text:
            try:
                d, t = DA(date_text), TM(time_text)
                if d is not None and t is not None:
                    return with_offset(datetime.combine(d, t) + timedelta(days=1 if next_day else 0),
                                       offset)
            except ValueError:
                log.info("ignoring unusable %s/%s", tag_name(date_kw or "StudyDate"), tag_name(time_kw))
    return None


def _before(time_text: str, other_text: str) -> bool:
    """Whether ``time_text`` is more than 12 h before ``other_text`` on the clock: after
    midnight (a run a few seconds before StudyTime is on the same day)."""
    try:
        a, b = TM(time_text), TM(other_text)
    except ValueError:
        return False
    if a is None or b is None:
        return False
    return (b.hour - a.hour) * 3600 + (b.minute - a.minute) * 60 + (b.second - a.second) > 12 * 3600


def run_start(look: _Lookup) -> datetime | None:
    """Start of a run: first frame's datetime (enhanced), else acquisition, else content time."""
    for dt_kw in ("FrameAcquisitionDateTime", "FrameReferenceDateTime"):
        value = _datetime(look, dt_kw, None, None, frame=0) if look.per_frame or look.shared else None
        if value is not None:
            return value
    return (_datetime(look, "AcquisitionDateTime", "AcquisitionDate", "AcquisitionTime")
            or _datetime(look, None, "ContentDate", "ContentTime"))


#: a plausible frame time (ms). Below 1 ms (0.0667: the frame time in seconds; 0; negative)
#: fluoroscopy time, and the dose estimated from it, would silently be wrong. Up to one frame
#: a minute: slow serial runs (a frame every few seconds) exist, and refusing one loses its dose.
FRAME_TIME_RANGE_MS = (1.0, 60_000.0)


def _plausible_ms(value: float) -> bool:
    return FRAME_TIME_RANGE_MS[0] <= value <= FRAME_TIME_RANGE_MS[1]


def _frame_time_ms(look: _Lookup) -> float | None:
    """(0018,1063) FrameTime when plausible, else None."""
    value = look.float("FrameTime", None)
    return value if value is not None and _plausible_ms(value) else None


#: a step between frames longer than this many nominal intervals, and than PAUSE_MIN_MS, is the
#: pedal released inside a stored run (beam off); shorter ones are frame-rate changes (DSA
#: programs go from 4 to 0.5 frames/s: steps up to 2 s), counted in full
PAUSE_STEPS = 3.0
PAUSE_MIN_MS = 2000.0


def _beam_intervals_ms(steps_ms) -> list[float]:
    """The time each frame stands for, from the steps between frames: the step to the next
    frame, but a pause (beam off: see PAUSE_STEPS) counts the run's nominal interval (the lower
    median step: of two steps, one a pause, the mean would count half the pause); the last
    frame, with no step after it, is given the nominal interval. Of two frames the one step is
    the nominal: the last frame gets at most PAUSE_MIN_MS (a pause in it counted once, not
    twice)."""
    nominal_ms = statistics.median_low(steps_ms)
    pause_ms = max(PAUSE_STEPS * nominal_ms, PAUSE_MIN_MS)
    last_ms = min(nominal_ms, PAUSE_MIN_MS) if len(steps_ms) == 1 else nominal_ms
    return [nominal_ms if step > pause_ms else step for step in steps_ms] + [last_ms]


def _timing(look: _Lookup, n: int, path: str):
    """Frame offsets since the run start (s), frame intervals (ms) and the run start.

    Sources, first usable wins: FrameTimeVector, FrameTime, per-frame datetimes,
    AcquisitionDuration / n (the complete acquisition: the last frame's own time included).
    One whose steps are not all plausible (:data:`FRAME_TIME_RANGE_MS`) is skipped with a
    warning naming it, so a run keeps its frames when another source gives its timing; with none usable, the error names the
    implausible tag, or says what is wrong with the per-frame times (a run's fluoroscopy time
    must not silently be wrong).
    """
    start = run_start(look)
    raw_frame_time = look.float("FrameTime", None)
    frame_time_ms = _frame_time_ms(look)
    ftv = look.floats("FrameTimeVector", None)
    implausible: list[str] = []
    if ftv is not None and len(ftv) != n:
        implausible.append(f"{tag_name('FrameTimeVector')} has {len(ftv)} values for {n} frames")
        ftv = None
    if ftv is not None and n > 1 and not all(_plausible_ms(v) for v in ftv[1:]):
        implausible.append(f"{tag_name('FrameTimeVector')} has increments outside "
                           f"{FRAME_TIME_RANGE_MS[0]:g}-{FRAME_TIME_RANGE_MS[1]:g} ms "
                           f"({', '.join(f'{v:g}' for v in ftv[1:4])}...)")
        ftv = None
    if raw_frame_time is not None and frame_time_ms is None:
        implausible.append(f"{tag_name('FrameTime')} = {raw_frame_time:g} ms is outside "
                           f"{FRAME_TIME_RANGE_MS[0]:g}-{FRAME_TIME_RANGE_MS[1]:g} ms (seconds "
                           "instead of ms?)")
    per_frame_times, per_frame_problem = _per_frame_times(look, n)
    duration_ms = _duration_interval_ms(look, n)
    if ftv is not None and n > 1:
        offsets, acc = [], 0.0
        for k, inc in enumerate(ftv):
            acc += inc if k else 0.0
            offsets.append(acc / 1000.0)
        intervals = _beam_intervals_ms(ftv[1:])
        _warn_if_frame_time_differs(path, frame_time_ms, statistics.median_low(ftv[1:]))
    elif frame_time_ms is not None:
        offsets = [k * frame_time_ms / 1000.0 for k in range(n)]
        intervals = [frame_time_ms] * n
    elif per_frame_times is not None:
        offsets = per_frame_times
        intervals = _beam_intervals_ms([(b - a) * 1000.0 for a, b in zip(offsets, offsets[1:])])
    elif n == 1:
        single_ms = (look.amount("ExposureTimeInms") or look.amount("ExposureTime")
                     or look.amount("AveragePulseWidth") or 0.0)
        offsets, intervals = [0.0], [single_ms]
    elif duration_ms is not None:
        log.warning("%s: frame timing from %s / %d frames: %g ms%s", path,
                    tag_name("AcquisitionDuration"), n, duration_ms,
                    f" ({per_frame_problem})" if per_frame_problem else "")
        per_frame_problem = None
        offsets = [k * duration_ms / 1000.0 for k in range(n)]
        intervals = [duration_ms] * n
    elif (raw_frame_time is not None and 0.0 < raw_frame_time < 1.0
          and _plausible_ms(raw_frame_time * 1000.0)):
        # the last resort: a frame time written in seconds (0.0667), read as such with a
        # warning, rather than the run and its dose refused
        frame_time_ms = raw_frame_time * 1000.0
        log.warning("%s: %s = %g is read as seconds: %g ms", path, tag_name("FrameTime"),
                    raw_frame_time, frame_time_ms)
        implausible = []
        offsets = [k * frame_time_ms / 1000.0 for k in range(n)]
        intervals = [frame_time_ms] * n
    elif implausible:
        tag = "FrameTimeVector" if "FrameTimeVector" in implausible[0] else "FrameTime"
        raise UnsupportedDicomError(f"{'; '.join(implausible)}, and no other usable frame timing; "
                                    "re-export the run with its frame time in ms", path=path,
                                    tag=tag_name(tag))
    elif per_frame_problem:
        raise UnsupportedDicomError(
            f"{n} frames but no usable frame timing: {per_frame_problem}; and no FrameTime, "
            "FrameTimeVector or AcquisitionDuration", path=path, tag=_per_frame_tag(look))
    else:
        raise MissingAttributeError(
            f"{n} frames but no usable frame timing; needs FrameTime, FrameTimeVector (with {n} "
            "values), per-frame FrameReferenceDateTime or AcquisitionDuration (CineRate is not "
            "used: it is an integer)", path=path, tag=tag_name("FrameTime"))
    if implausible and n > 1:
        log.warning("%s: %s; frame timing taken from another attribute", path,
                    "; ".join(implausible))
    return tuple(offsets), tuple(float(v) for v in intervals), start


#: FrameTime and the FrameTimeVector's typical step further apart than this share are two
#: timings of one run: the vector is used, but the user is told (its fluoroscopy time differs)
FRAME_TIME_DISAGREEMENT = 0.10


def _warn_if_frame_time_differs(path: str, frame_time_ms: float | None, step_ms: float) -> None:
    if (frame_time_ms is not None
            and abs(step_ms - frame_time_ms) > FRAME_TIME_DISAGREEMENT * frame_time_ms):
        log.warning("%s: %s = %g ms but %s steps %g ms (median); the vector is used", path,
                    tag_name("FrameTime"), frame_time_ms, tag_name("FrameTimeVector"), step_ms)


def _per_frame_tag(look: _Lookup) -> str:
    keyword = ("FrameAcquisitionDateTime" if look.text("FrameAcquisitionDateTime", 0)
               else "FrameReferenceDateTime")
    return tag_name(keyword)


def _frames_named(numbers: list[int]) -> str:
    """``frame 3``, ``frames 2, 3, 4``, ``frames 2, 3, 4, 5, 6, 7, ... (40 frames)``."""
    if len(numbers) == 1:
        return f"frame {numbers[0]}"
    more = f", ... ({len(numbers)} frames)" if len(numbers) > 6 else ""
    return f"frames {', '.join(str(k) for k in numbers[:6])}{more}"


def _per_frame_times(look: _Lookup, n: int) -> tuple[list[float] | None, str | None]:
    """The per-frame datetimes as offsets (s) when every step is plausible; else None and what
    is wrong with them, naming the frames (1-based), or None when the run has none."""
    if not look.per_frame or n < 2:
        return None, None
    times = [_datetime(look, "FrameAcquisitionDateTime", None, None, frame=k)
             or _datetime(look, "FrameReferenceDateTime", None, None, frame=k) for k in range(n)]
    dated = [k + 1 for k, t in enumerate(times) if t is not None]
    if not dated:
        return None, None
    what = "per-frame times (FrameAcquisitionDateTime, FrameReferenceDateTime)"
    undated = [k + 1 for k, t in enumerate(times) if t is None]
    if undated:
        held = (f" ({len(look.per_frame)} per-frame functional groups for {n} frames)"
                if len(look.per_frame) < n else "")
        return None, f"{what} are missing for {_frames_named(undated)}{held}"
    offsets = [(wall(t) - wall(times[0])).total_seconds() for t in times]
    steps_ms = [(b - a) * 1000.0 for a, b in zip(offsets, offsets[1:])]
    if all(_plausible_ms(step) for step in steps_ms):
        return offsets, None
    problems = []
    same = [k + 2 for k, step in enumerate(steps_ms) if 0.0 <= step < FRAME_TIME_RANGE_MS[0]]
    before = [k + 2 for k, step in enumerate(steps_ms) if step < 0.0]
    late = [k + 2 for k, step in enumerate(steps_ms) if step > FRAME_TIME_RANGE_MS[1]]
    if same:
        problems.append(f"{_frames_named(same)} at the time of the frame before (times to the "
                        "second, or copied?)")
    if before:
        problems.append(f"{_frames_named(before)} before the frame before")
    if late:
        problems.append(f"{_frames_named(late)} more than {FRAME_TIME_RANGE_MS[1] / 1000:g} s "
                        "after the frame before")
    return None, f"{what} are present but not usable: {'; '.join(problems)}"


def _duration_interval_ms(look: _Lookup, n: int) -> float | None:
    """(0018,9073) AcquisitionDuration (s) over the run's n frames, when plausible: "the time
    needed for the complete acquisition" (PS3.3 C.8.19.3) holds the last frame's own time, as
    sifluoro's Enhanced XA writer gives it (last frame's offset + frame time), so the time
    counted is the duration (over n - 1 steps it was n/(n - 1) of it)."""
    duration_s = look.float("AcquisitionDuration")
    if duration_s is None or n < 2:
        return None
    interval_ms = duration_s * 1000.0 / n
    return interval_ms if _plausible_ms(interval_ms) else None


def _filtration(look: _Lookup) -> tuple[float | None, float | None]:
    materials = look.text("FilterMaterial").upper().split("\\") if look.text("FilterMaterial") else []
    thickness = look.floats("FilterThicknessMinimum") or ()
    if any(mm < 0 for mm in thickness):  # the tube output model raised ValueError on it
        log.info("ignoring negative %s", tag_name("FilterThicknessMinimum"))
        thickness = ()
    cu = al = None
    for material, mm in zip(materials, thickness):
        if material.startswith("COPPER"):
            cu = (cu or 0.0) + mm
        elif material.startswith("ALUMINUM"):
            al = (al or 0.0) + mm
    return cu, al


def _technique(look: _Lookup, n: int, rows: int, columns: int, intervals_ms, path: str = "") -> Technique:
    sid_mm = look.amount("DistanceSourceToDetector")
    sod_mm, source_to_patient_mm = geometry.source_distances_mm(look)
    spacing_xy = geometry.detector_spacing_xy_mm(look, sid_mm, sod_mm, path)
    geometry.warn_if_spacing_changes(look, path)
    fov_mm, fov_shape = geometry.field_of_view(look, path)
    field, collimator = geometry.exposed_field(look, path, rows=rows, columns=columns)
    cu, al = _filtration(look)
    frame_time = _frame_time_ms(look)
    pulse_rate = 1000.0 / frame_time if frame_time else (
        1000.0 / intervals_ms[0] if n > 1 and intervals_ms[0] > 0 else None)
    dose = _reported_dose(look, n, path)
    setting = look.text("RadiationSetting").upper() or None
    mode = look.text("RadiationMode").upper() or None
    tech = Technique(
        kvp=dose.get("kvp", look.amount("KVP")),
        tube_current_ma=dose.get("tube_current_ma",
                                 look.amount("XRayTubeCurrentInmA") or look.amount("XRayTubeCurrent")),
        pulse_width_ms=look.amount("AveragePulseWidth"),
        pulse_rate_per_s=pulse_rate,
        frame_time_ms=frame_time if frame_time else (intervals_ms[0] if n > 1 else None),
        exposure_time_ms=dose.get("exposure_time_ms",
                                  look.amount("ExposureTimeInms") or look.amount("ExposureTime")),
        exposure_mas=dose.get("exposure_mas", look.amount("ExposureInmAs") or look.amount("Exposure")),
        sid_mm=sid_mm,
        source_to_patient_mm=source_to_patient_mm,
        source_to_isocenter_mm=sod_mm,
        field_of_view_mm=fov_mm,
        field_of_view_shape=fov_shape,
        intensifier_size_mm=look.amount("IntensifierSize"),
        filter_cu_mm=cu,
        filter_al_mm=al,
        imager_pixel_spacing_xy_mm=spacing_xy,
        primary_angle_deg=look.float("PositionerPrimaryAngle"),
        secondary_angle_deg=look.float("PositionerSecondaryAngle"),
        radiation_setting=setting if setting in ("SC", "GR") else None,
        radiation_mode=mode if mode in ("PULSED", "CONTINUOUS") else None,
        shutter=field,
        collimator=collimator,
        reported_dap_gycm2=dose.get("reported_dap_gycm2"),
        reported_air_kerma_mgy=dose.get("reported_air_kerma_mgy"),
        reported_air_kerma_mgy_per_frame=dose.get("reported_air_kerma_mgy_per_frame"),
    )
    if (tech.radiation_mode == "PULSED" and tech.pulse_width_ms is None and tech.exposure_mas is None
            and tech.exposure_time_ms is None and tech.reported_dap_gycm2 is None
            and tech.reported_air_kerma_mgy is None):
        log.warning("%s: (0018,115A) RadiationMode PULSED without (0018,1154) AveragePulseWidth "
                    "nor a tube load or reported dose: the run's dose cannot be estimated", path)
    return tech


def _reported_dose(look: _Lookup, n: int, path: str) -> dict:
    """What the header reports about the run's dose, and per-exposure technique that is more
    specific than the run-level attributes. Keys are Technique fields; absent means unknown.

    - DAP of the run: Image and Fluoroscopy Area Dose Product (0018,115E), else the Enhanced
      XA/XRF Acquired Image Area Dose Product (0018,9473) (XA/XRF Acquisition Module, this
      image only); both in dGy·cm².
    - Air kerma: Entrance Dose in mGy (0040,8302), else Entrance Dose (0040,0302) in dGy; per
      frame when every per-frame functional group holds Entrance Dose in mGy in an X-Ray
      Acquisition Dose Sequence (0018,9542) (the breast projection macro: no XA/XRF macro
      carries dose per frame).
    - Enhanced XA/XRF per-frame technique, X-Ray Frame Acquisition Macro (Frame Acquisition
      Sequence (0018,9417): KVP, X-Ray Tube Current in mA): the run's mean current and the
      current-weighted kVp when every frame has them, instead of the first frame's.
    - Exposure Dose Sequence (0040,030E) items, when they describe this run (one item, or one
      per frame): total tube load, exposure time, load-weighted kVp, mean current.
    """
    out: dict = {}
    dap_dgycm2 = look.amount("ImageAndFluoroscopyAreaDoseProduct", None)
    if dap_dgycm2 is None:
        dap_dgycm2 = look.amount("AcquiredImageAreaDoseProduct", None)
    if dap_dgycm2 is not None:
        out["reported_dap_gycm2"] = dap_dgycm2 / 10.0
    entrance_mgy = look.amount("EntranceDoseInmGy", None)
    if entrance_mgy is None and look.amount("EntranceDose", None) is not None:
        entrance_mgy = look.amount("EntranceDose", None) * 100.0  # stored in dGy
    if entrance_mgy is not None:
        out["reported_air_kerma_mgy"] = entrance_mgy
    if len(look.per_frame) == n and n > 0:
        per_frame = [_in_sequence(look, g, "XRayAcquisitionDoseSequence", "EntranceDoseInmGy")
                     for g in look.per_frame]
        if all(v is not None for v in per_frame):
            out["reported_air_kerma_mgy_per_frame"] = tuple(per_frame)
        kvps = [_in_sequence(look, g, "FrameAcquisitionSequence", "KVP") for g in look.per_frame]
        currents = [_in_sequence(look, g, "FrameAcquisitionSequence", "XRayTubeCurrentInmA")
                    for g in look.per_frame]
        if all(c is not None for c in currents) and n > 1:
            out["tube_current_ma"] = sum(currents) / n
            if all(k for k in kvps) and sum(currents) > 0:
                out["kvp"] = sum(k * c for k, c in zip(kvps, currents)) / sum(currents)
    try:
        exposures = read_exposure_doses(look.ds, path)
    except InputError as exc:
        log.warning("ignoring the exposure dose items: %s", exc)
        exposures = ()
    if exposures and len(exposures) in (1, n):
        technique = run_technique(exposures)
        out.update(technique)
        if technique.get("exposure_time_ms"):
            out["tube_current_ma"] = technique["exposure_mas"] * 1000.0 / technique["exposure_time_ms"]
    elif exposures:
        log.info("%s: %d exposure dose items for %d frame(s) describe the procedure step, not "
                 "this run; not used", path, len(exposures), n)
    return out


def _in_sequence(look: _Lookup, group: Dataset, sequence: str, keyword: str) -> float | None:
    """A number in the first item of a functional group's macro sequence, or None; one that
    is negative or above what X-ray can give is ignored with a warning (once per attribute),
    as the run-level values are (:meth:`_Lookup.amount`): the run-level value is then used."""
    try:
        seq = group.get(sequence)
        value = seq[0].get(keyword) if seq else None
        number = float(value) if value not in (None, "") else None
    except Exception:  # odd values of optional attributes are ignored
        return None
    if number is None or not math.isfinite(number):
        return None
    most = AMOUNT_MAX.get(keyword, math.inf)
    if 0 <= number <= most:
        return number
    if keyword not in look._refused:
        look._refused.add(keyword)
        log.warning("%s: ignoring per-frame %s = %g in %s: %s", look.path or "header",
                    tag_name(keyword), number, tag_name(sequence), "negative" if number < 0
                    else f"above {most:g}, not a possible value")
    return None


def sort_tiebreak(run: Run) -> tuple:
    """Order of runs that start at the same time: series, instance number, then UID."""
    return (run.series_number if run.series_number is not None else 1 << 31,
            run.instance_number if run.instance_number is not None else 1 << 31,
            run.sop_instance_uid)
