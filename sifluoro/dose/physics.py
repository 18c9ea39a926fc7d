"""Dose from technique: tube output (SpekPy-derived table), inverse square, field area.

Units: air kerma in mGy, DAP in Gy·cm², distances in mm, tube load in mAs.
"""
from __future__ import annotations

import math

from sifluoro.config import DoseSettings
from sifluoro.dose.output_table import load_table, output_ugy_per_mas_at_1m
from sifluoro.dose.records import IrradiationEvent
from sifluoro.model import Device, Technique


def tube_output_mgy_per_mas_at_1m(kvp: float, *, filter_al_mm: float, filter_cu_mm: float,
                                  anode_angle_deg: float) -> float:
    """Air kerma per mAs at 1 m from the focal spot, free in air (mGy/mAs).

    From the shipped SpekPy-derived table (:mod:`sifluoro.dose.output_table`), numpy only.
    ``filter_al_mm`` is the total aluminium (inherent plus added).

    Raises
    ------
    ValueError
        ``kvp`` outside the table's 40-150 kV.
    """
    return output_ugy_per_mas_at_1m(float(kvp), filter_al_mm=float(filter_al_mm),
                                    filter_cu_mm=float(filter_cu_mm),
                                    anode_angle_deg=float(anode_angle_deg)) / 1000.0


def reference_point_distance_mm(tech: Technique, settings: DoseSettings) -> float | None:
    """Source to the patient entrance reference point.

    Isocentric C-arms (IEC 60601-2-43): 150 mm from the isocentre toward the source. Without a
    known isocentre (mobile C-arms): a fixed distance from the image receptor toward the source.
    """
    if tech.source_to_isocenter_mm:
        return tech.source_to_isocenter_mm - settings.reference_point_offset_mm
    if tech.sid_mm:
        return tech.sid_mm - settings.reference_point_from_receptor_mm
    return None


def mas_per_frame(tech: Technique, frame_interval_ms: float, n_frames: int) -> float | None:
    """Tube load of one frame: mA × pulse width for pulsed runs, else what the header allows."""
    if tech.tube_current_ma and tech.pulse_width_ms:
        return tech.tube_current_ma * tech.pulse_width_ms / 1000.0 * tech.pulses_per_frame
    if tech.exposure_mas:
        return tech.exposure_mas / n_frames
    if tech.tube_current_ma and tech.exposure_time_ms:
        return tech.tube_current_ma * tech.exposure_time_ms / 1000.0 / n_frames
    if tech.tube_current_ma and frame_interval_ms and tech.radiation_mode != "PULSED":
        # continuous fluoroscopy (a pulsed run's current flows only during its pulses: without
        # their width its load is unknown, not the whole frame interval's)
        return tech.tube_current_ma * frame_interval_ms / 1000.0
    return None


def field_area_cm2_at_detector(tech: Technique, rows: int, columns: int) -> float | None:
    """Exposed field area at the detector plane.

    The collimator's aperture when stored (it limits the beam), else the display shutters (a
    proxy), else the whole image, in pixels, scaled by the detector pixel spacing. Without the
    spacing, by the field of view over the matrix (FieldOfViewDimensions / (Columns, Rows)),
    the aperture's area capped at the field of view's own; without an aperture, the field of
    view by its shape (a round field is a circle of the stored diameter).
    """
    aperture = tech.collimator if tech.collimator is not None else tech.shutter
    spacing = tech.imager_pixel_spacing_xy_mm
    # the image's size unknown (a damaged header): only a collimator rectangle with the
    # detector spacing, or the field of view alone, give the area
    if (rows <= 0 or columns <= 0) and not (
            (spacing is not None and aperture is not None and aperture.rect_xyxy is not None)
            or (spacing is None and aperture is None)):
        return None
    fov_mm2 = None
    if tech.field_of_view_mm is not None:
        fov_mm2 = field_of_view_area_mm2(tech.field_of_view_mm, tech.field_of_view_shape)
    if spacing is None and fov_mm2 is not None:
        if aperture is None or (aperture.rect_xyxy is None and aperture.circle_xyr is None):
            return fov_mm2 / 100.0
        # the whole field of view ignored the collimation (+58 % DAP, review s16 M4)
        spacing = (tech.field_of_view_mm[0] / columns, tech.field_of_view_mm[1] / rows)
    if spacing is None:
        return None
    sx, sy = spacing
    rect = (0, 0, columns - 1, rows - 1)
    if aperture is not None and aperture.rect_xyxy is not None:
        rect = aperture.rect_xyxy
    circle = aperture.circle_xyr if aperture is not None else None
    area_mm2 = aperture_area_px(rect, circle) * sx * sy
    if tech.imager_pixel_spacing_xy_mm is None:
        area_mm2 = min(area_mm2, fov_mm2)
    return area_mm2 / 100.0


def aperture_area_px(rect_xyxy: tuple[float, float, float, float],
                     circle_xyr: tuple[float, float, float] | None) -> float:
    """Area (px²) of a rectangle of pixels (inclusive edges), cut by a circle when there is
    one (blades across an intensifier's round field: their intersection, not the smaller)."""
    x0, y0, x1, y1 = rect_xyxy
    left, right, top, bottom = x0 - 0.5, x1 + 0.5, y0 - 0.5, y1 + 0.5
    if right <= left or bottom <= top:
        return 0.0
    if circle_xyr is None:
        return (right - left) * (bottom - top)
    cx, cy, r = circle_xyr
    return max(0.0, _disc_below_left(right - cx, bottom - cy, r) - _disc_below_left(left - cx, bottom - cy, r)
               - _disc_below_left(right - cx, top - cy, r) + _disc_below_left(left - cx, top - cy, r))


def _disc_below_left(x: float, y: float, r: float) -> float:
    """Area of the disc of radius ``r`` at the origin where u <= x and v <= y (exact)."""
    def chord_integral(a: float, b: float) -> float:  # of sqrt(r² - u²) over [a, b]
        def g(u: float) -> float:
            return 0.5 * (u * math.sqrt(max(r * r - u * u, 0.0)) + r * r * math.asin(u / r))
        return g(b) - g(a) if b > a else 0.0
    xc = min(max(x, -r), r)
    if y <= -r:
        return 0.0
    if y >= r:
        return 2.0 * chord_integral(-r, xc)
    s = math.sqrt(r * r - y * y)  # where the line v = y crosses the circle
    area = y * max(0.0, min(xc, s) + s) + chord_integral(-s, min(xc, s))  # chords cut at y
    if y > 0:  # whole chords left and right of the crossing
        area += 2.0 * (chord_integral(-r, min(xc, -s)) + chord_integral(s, xc))
    return area


def field_of_view_area_mm2(dims_mm: tuple[float, float], shape: str | None) -> float:
    """Area of a field of view: the circle of the diameter for ROUND, the regular hexagon in
    the circle for HEXAGONAL, else the rectangle."""
    if shape == "ROUND":
        return math.pi / 4.0 * dims_mm[0] * dims_mm[1]
    if shape == "HEXAGONAL":
        return 3.0 * math.sqrt(3.0) / 8.0 * dims_mm[0] * dims_mm[1]
    return dims_mm[0] * dims_mm[1]


def estimate_frame_dose(tech: Technique, *, rows: int, columns: int, frame_interval_ms: float,
                        n_frames: int, settings: DoseSettings,
                        device: Device | None = None) -> tuple[float, float | None] | None:
    """(air_kerma_mgy, dap_gycm2) of one frame at the reference point, or None if the header
    lacks what the estimate needs (kVp, tube load, distances); the DAP is None when the field
    size at the detector or the source-detector distance is unknown. ``device`` picks the tube
    data (:meth:`DoseSettings.tube_for`)."""
    low, high = load_table().kvp_range
    if not tech.kvp or not low <= tech.kvp <= high:
        return None
    mas = mas_per_frame(tech, frame_interval_ms, n_frames)
    d_ref = reference_point_distance_mm(tech, settings)
    if mas is None or d_ref is None or d_ref <= 0:
        return None
    device = device or Device()
    inherent_al_mm, anode_angle_deg = settings.tube_for(device.manufacturer, device.model)
    output = tube_output_mgy_per_mas_at_1m(tech.kvp, filter_al_mm=inherent_al_mm + (tech.filter_al_mm or 0.0),
                                           filter_cu_mm=tech.filter_cu_mm or 0.0,
                                           anode_angle_deg=anode_angle_deg)
    kerma_mgy = output * mas * (1000.0 / d_ref) ** 2
    area_det = field_area_cm2_at_detector(tech, rows, columns)
    if area_det is None or not tech.sid_mm:  # no field size at the detector: DAP unknown, not 0
        return kerma_mgy, None
    # DAP is invariant with distance; evaluate at the reference point
    area_ref_cm2 = area_det * (d_ref / tech.sid_mm) ** 2
    return kerma_mgy, kerma_mgy / 1000.0 * area_ref_cm2


def event_reference_point_distance_mm(event: IrradiationEvent, settings: DoseSettings) -> float | None:
    """Source to the reference point of a dose report's event.

    The event's own Distance Source to Reference Point (DCM 113737) when it gives one; else
    from its Reference Point Definition: 30 cm in front of the image input surface (mobile
    C-arms) from the source-detector distance, otherwise (15 cm from the isocentre toward the
    source, the IEC 60601-2-43 point) from the source-isocentre distance.
    """
    if event.source_to_reference_point_mm:
        return event.source_to_reference_point_mm
    definition = event.reference_point.lower()
    if "image input" in definition and event.sid_mm:
        return event.sid_mm - settings.reference_point_from_receptor_mm
    if event.source_to_isocenter_mm:
        return event.source_to_isocenter_mm - settings.reference_point_offset_mm
    if event.sid_mm and not definition:
        return event.sid_mm - settings.reference_point_from_receptor_mm
    return None


def event_tube_load_mas(event: IrradiationEvent) -> float | None:
    """An event's tube load: its Exposure when reported, else mA × pulse width × pulses."""
    if event.exposure_mas:
        return event.exposure_mas
    if event.tube_current_ma and event.pulse_width_ms and event.n_pulses:
        return event.tube_current_ma * event.pulse_width_ms / 1000.0 * event.n_pulses
    return None


def estimate_event_dose(event: IrradiationEvent, settings: DoseSettings,
                        device: Device | None = None) -> tuple[float, float | None] | None:
    """(air_kerma_mgy, dap_gycm2 or None) of a dose report's event from its technique alone.

    For checking a device's reported dose against the model (``benchmarks/bench_dose_estimate``)
    and for reports that give technique without dose. None when the event lacks kVp (or it is
    outside the output table's range), tube load or a distance to the reference point; DAP
    needs the collimated field area (at the detector) and the source-detector distance.
    ``device`` (the report's) picks the tube data (:meth:`DoseSettings.tube_for`).
    """
    mas = event_tube_load_mas(event)
    d_ref_mm = event_reference_point_distance_mm(event, settings)
    low, high = load_table().kvp_range
    if not event.kvp or not low <= event.kvp <= high or mas is None or not d_ref_mm or d_ref_mm <= 0:
        return None
    device = device or Device()
    inherent_al_mm, anode_angle_deg = settings.tube_for(device.manufacturer, device.model)
    output = tube_output_mgy_per_mas_at_1m(event.kvp, filter_al_mm=inherent_al_mm + (event.filter_al_mm or 0.0),
                                           filter_cu_mm=event.filter_cu_mm or 0.0,
                                           anode_angle_deg=anode_angle_deg)
    kerma_mgy = output * mas * (1000.0 / d_ref_mm) ** 2
    dap = None
    if event.collimated_field_area_cm2 and event.sid_mm:
        dap = kerma_mgy / 1000.0 * event.collimated_field_area_cm2 * (d_ref_mm / event.sid_mm) ** 2
    return kerma_mgy, dap
