"""Header geometry: exposed field (collimator, display shutters), detector pixel spacing,
source distances and field of view.

Reads through the header's lookup (per-frame, shared functional groups, top level), so the
legacy XA/RF attributes and their Enhanced XA/XRF macros are read alike. Odd values are ignored
with a log line naming the tag.
"""
from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING

from pydicom.datadict import tag_for_keyword

from sifluoro.model import Shutter

if TYPE_CHECKING:  # header.py imports this module
    from sifluoro.acquire.header import _Lookup

log = logging.getLogger(__name__)

# legacy XA, RF and their Enhanced forms: (0018,1111) is the source-isocentre distance there
_XA_RF_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.2",
    "1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.12.2.1"})
# sifluoro's writer up to this version stored the simulator's source-skin distance in (0018,1111)
_LAST_SKIN_IN_1111_VERSION = 10
_SIFLUORO_VERSION = re.compile(r"^SIFLUORO_(\d+)$")

# (shape, left, upper, right, lower, centre (row, column), radius, polygon vertices (row, column))
_SHUTTER_KW = ("ShutterShape", "ShutterLeftVerticalEdge", "ShutterUpperHorizontalEdge",
               "ShutterRightVerticalEdge", "ShutterLowerHorizontalEdge", "CenterOfCircularShutter",
               "RadiusOfCircularShutter", "VerticesOfThePolygonalShutter")
_COLLIMATOR_KW = ("CollimatorShape", "CollimatorLeftVerticalEdge", "CollimatorUpperHorizontalEdge",
                  "CollimatorRightVerticalEdge", "CollimatorLowerHorizontalEdge",
                  "CenterOfCircularCollimator", "RadiusOfCircularCollimator",
                  "VerticesOfThePolygonalCollimator")


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return keyword if tag is None else f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword}"


def _aperture(look: _Lookup, keywords: tuple[str, ...], path: str) -> Shutter | None:
    """A rectangular/circular/polygonal aperture in pixels (DICOM stores 1-based edges and
    (row, column) points). A polygon is kept as its bounding rectangle (the model has no
    polygons; C-arm fields are rectangles and circles)."""
    shape_kw, left_kw, upper_kw, right_kw, lower_kw, centre_kw, radius_kw, vertices_kw = keywords
    shape = look.text(shape_kw).upper()
    if not shape:
        return None
    rect = circle = None
    if "RECTANGULAR" in shape:
        edges = [look.float(k) for k in (left_kw, upper_kw, right_kw, lower_kw)]
        if all(e is not None for e in edges) and edges[0] <= edges[2] and edges[1] <= edges[3]:
            rect = tuple(int(e) - 1 for e in edges)
        else:
            log.info("%s: ignoring the rectangle of %s: edges missing or crossed", path, _tag(shape_kw))
    if "POLYGONAL" in shape:
        vertices = look.floats(vertices_kw)
        if vertices and len(vertices) >= 6 and len(vertices) % 2 == 0:
            rows, cols = vertices[0::2], vertices[1::2]
            box = (int(min(cols)) - 1, int(min(rows)) - 1, int(max(cols)) - 1, int(max(rows)) - 1)
            rect = box if rect is None else _intersect_rects(rect, box)
        else:
            log.info("%s: ignoring unusable %s", path, _tag(vertices_kw))
    if "CIRCULAR" in shape:
        centre = look.floats(centre_kw)
        radius = look.float(radius_kw)
        if centre and len(centre) == 2 and radius and radius > 0:
            circle = (centre[1] - 1.0, centre[0] - 1.0, radius)
        else:
            log.info("%s: ignoring the circle of %s: centre or radius missing", path,
                     _tag(shape_kw))
    return Shutter(rect, circle) if rect or circle else None


def _intersect_rects(a, b):
    return (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))


def _intersect(a: Shutter | None, b: Shutter | None) -> Shutter | None:
    """Both apertures at once. Two circles are kept as the smaller one (an approximation:
    a device stores one circle, the image intensifier's or the iris')."""
    if a is None or b is None:
        return a if b is None else b
    rect = a.rect_xyxy if b.rect_xyxy is None else b.rect_xyxy if a.rect_xyxy is None else \
        _intersect_rects(a.rect_xyxy, b.rect_xyxy)
    if rect is not None and (rect[2] < rect[0] or rect[3] < rect[1]):
        return None
    circles = [c for c in (a.circle_xyr, b.circle_xyr) if c is not None]
    return Shutter(rect, min(circles, key=lambda c: c[2]) if circles else None)


def exposed_field(look: _Lookup, path: str = "", *, rows: int = 0, columns: int = 0
                  ) -> tuple[Shutter | None, Shutter | None]:
    """(field shown in the image, collimator).

    The collimator is the X-Ray Collimator module's (0018,1700) CollimatorShape with its edges,
    circle or polygon, top level (legacy XA/RF) or in the Collimator Shape Sequence (0018,9763)
    of the functional groups (Enhanced XA/XRF); it limits the beam, so the dose estimate uses
    it. Display shutters (0018,1600) only mask what is shown. The image stages get both at
    once: the field is what the collimator lets through and the shutters show. With the
    frame's ``rows`` and ``columns``, a field that is not in the frame (:func:`in_frame`) is
    ignored (said): the stages take the whole frame as exposed.
    """
    collimator = _aperture(look, _COLLIMATOR_KW, path)
    shutter = _aperture(look, _SHUTTER_KW, path)
    field = _intersect(collimator, shutter)
    if field is None and collimator is not None and shutter is not None:
        log.info("%s: %s and %s do not overlap; the collimator is taken as the field",
                 path, _tag("CollimatorShape"), _tag("ShutterShape"))
        field = collimator
    if field is not None and rows > 0 and columns > 0 and not in_frame(field, rows, columns):
        log.warning("%s: the exposed field of %s / %s (%s) is not in the %dx%d frame (edges given "
                    "in another matrix?): ignored, the whole frame is taken as exposed", path,
                    _tag("ShutterShape"), _tag("CollimatorShape"), _shown(field), columns, rows)
        field = None
    return field, collimator


#: a rectangle reaching further than this share of the frame's size beyond its edges is not
#: the frame's (edges in the detector's full matrix for an image stored smaller)
OUTSIDE_SHARE = 0.1


def in_frame(field: Shutter, rows: int, columns: int) -> bool:
    """Whether ``field`` (pixels) can be the exposed field of a ``rows`` x ``columns`` frame:
    it overlaps the frame, and a rectangle does not reach far beyond it (review s25 r3: edges
    in another matrix left the stages an empty or partial field, and no joint line, target or
    tip on any frame, without a word). A circle may be larger than the frame (an image
    intensifier's round field cut by a square matrix)."""
    reach = OUTSIDE_SHARE * max(rows, columns)
    if field.rect_xyxy is not None:
        x0, y0, x1, y1 = field.rect_xyxy
        if x1 < 0 or y1 < 0 or x0 > columns - 1 or y0 > rows - 1:
            return False
        if max(-x0, -y0, x1 - (columns - 1), y1 - (rows - 1)) > reach:
            return False
    if field.circle_xyr is not None:
        cx, cy, r = field.circle_xyr
        nearest_x, nearest_y = min(max(cx, 0.0), columns - 1.0), min(max(cy, 0.0), rows - 1.0)
        if math.hypot(cx - nearest_x, cy - nearest_y) >= r:
            return False
    return True


def _shown(field: Shutter) -> str:
    parts = []
    if field.rect_xyxy is not None:
        parts.append("rectangle x %d-%d, y %d-%d" % (field.rect_xyxy[0], field.rect_xyxy[2],
                                                     field.rect_xyxy[1], field.rect_xyxy[3]))
    if field.circle_xyr is not None:
        parts.append("circle at (%.0f, %.0f), radius %.0f" % field.circle_xyr)
    return ", ".join(parts)


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


def _writes_skin_distance(look: _Lookup) -> bool:
    """Files of sifluoro's simulator from writer versions that put the source-skin distance in
    (0018,1111) (SoftwareVersions SIFLUORO_010 and before)."""
    for version in look.text("SoftwareVersions", None).split("\\"):
        match = _SIFLUORO_VERSION.match(version.strip())
        if match and int(match.group(1)) <= _LAST_SKIN_IN_1111_VERSION:
            return True
    return False


def source_distances_mm(look: _Lookup) -> tuple[float | None, float | None]:
    """(source-isocentre, source-patient) in mm.

    (0018,9402) DistanceSourceToIsocenter when given. In the XA and XRF Positioner modules
    (PS3.3 C.8.7.5, C.8.7.6) (0018,1111) DistanceSourceToPatient is the distance from the
    source to the isocentre, the centre of the field of view ("traditionally referred to as
    Source Object Distance (SOD)"): for XA/RF it is the isocentre distance when (0018,9402) is
    absent. Elsewhere (DX: to the table or bucky) it is kept as the source-patient distance.
    """
    isocenter = _positive(look.amount("DistanceSourceToIsocenter"))
    to_patient = _positive(look.amount("DistanceSourceToPatient"))
    xa_rf = (look.text("SOPClassUID", None) in _XA_RF_SOP_CLASSES
             or look.text("Modality", None) in ("XA", "RF"))
    if to_patient is None or not xa_rf or _writes_skin_distance(look):
        return isocenter, to_patient
    return (isocenter if isocenter is not None else to_patient), None


def detector_spacing_xy_mm(look: _Lookup, sid_mm: float | None, sod_mm: float | None,
                           path: str = "") -> tuple[float, float] | None:
    """Pixel spacing at the detector plane, (x, y) in mm, or None when unknown.

    (0018,1164) ImagerPixelSpacing is at the detector. (0028,0030) PixelSpacing is calibrated
    in the patient (at the isocentre), smaller by the magnification: it is scaled by
    (0018,1114) EstimatedRadiographicMagnificationFactor, else by SID/SOD; without either the
    spacing is unknown. An ImagerPixelSpacing without two positive values is ignored (logged)
    and PixelSpacing tried.
    """
    imager = look.floats("ImagerPixelSpacing")
    if imager is not None:
        if len(imager) == 2 and min(imager) > 0:
            return imager[1], imager[0]
        log.warning("%s: ignoring %s %s: it needs two positive values (row, column spacing)",
                    path, _tag("ImagerPixelSpacing"), list(imager))
    pixel = look.floats("PixelSpacing")
    if pixel is None:
        return None
    if len(pixel) != 2 or min(pixel) <= 0:
        log.warning("%s: ignoring %s %s: it needs two positive values", path,
                    _tag("PixelSpacing"), list(pixel))
        return None
    magnification = look.float("EstimatedRadiographicMagnificationFactor")
    if magnification is not None and not magnification >= 1.0:
        log.info("%s: ignoring %s = %s (below 1)", path,
                 _tag("EstimatedRadiographicMagnificationFactor"), magnification)
        magnification = None
    if magnification is None and sid_mm and sod_mm and sid_mm >= sod_mm:
        magnification = sid_mm / sod_mm
    if magnification is None:
        log.warning("%s: only %s, calibrated in the patient, and neither %s nor source distances "
                    "to scale it to the detector: pixel spacing unknown", path,
                    _tag("PixelSpacing"), _tag("EstimatedRadiographicMagnificationFactor"))
        return None
    return pixel[1] * magnification, pixel[0] * magnification


def warn_if_spacing_changes(look: _Lookup, path: str = "") -> None:
    """Say when an Enhanced XA/XRF run's per-frame pixel spacing changes within the run (a zoom
    or calibration change between frames): the run keeps frame 1's spacing, so distances in mm
    on the later frames are off by the ratio; the user must know rather than trust them."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        first = look.floats(keyword, 0)
        if first is None:
            continue
        for k in range(1, len(look.per_frame)):
            other = look.floats(keyword, k)
            if other is not None and len(other) == len(first) and any(
                    abs(a - b) > 0.01 * abs(a) for a, b in zip(first, other)):
                log.warning("%s: per-frame %s changes within the run (frame 1: %s, frame %d: %s); "
                            "frame 1's is used for every frame: distances in mm from frame %d on "
                            "are off by their ratio", path, _tag(keyword),
                            "\\".join(f"{v:g}" for v in first), k + 1,
                            "\\".join(f"{v:g}" for v in other), k + 1)
                return
        return


def field_of_view(look: _Lookup, path: str = "") -> tuple[tuple[float, float] | None, str | None]:
    """((width, height) in mm, shape) of the field of view.

    (0018,1147) FieldOfViewShape RECTANGLE, ROUND or HEXAGONAL; (0018,9461)
    FieldOfViewDimensionsInFloat (Enhanced XA/XRF), else (0018,1149) FieldOfViewDimensions:
    row then column dimension for a rectangle, one diameter for a round field or the
    circumscribed circle of a hexagon.
    """
    dims = look.floats("FieldOfViewDimensionsInFloat") or look.floats("FieldOfViewDimensions")
    if not dims or min(dims) <= 0:
        return None, None
    shape = look.text("FieldOfViewShape").upper() or None
    if shape not in (None, "RECTANGLE", "ROUND", "HEXAGONAL"):
        log.info("%s: ignoring unknown %s %r", path, _tag("FieldOfViewShape"), shape)
        shape = None
    if shape in ("ROUND", "HEXAGONAL"):
        return (dims[0], dims[0]), shape
    return (dims[0], dims[-1]), shape

