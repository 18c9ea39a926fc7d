"""Cone-beam C-arm camera: point source, flat detector, LAO/RAO and cranio-caudal rotation.

Patient coordinates follow DICOM LPS (x toward the patient's left, y posterior, z cranial), mm.
The patient lies prone with the tube under the table: at 0/0 degrees the beam travels
anterior -> posterior (+y), image columns run toward the patient's left (+x) and rows toward
the feet (-z). ``primary_angle_deg`` > 0 moves the detector toward the patient's left (LAO
for this set-up), ``secondary_angle_deg`` > 0 moves it cranially.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _rotation(primary_angle_deg: float, secondary_angle_deg: float) -> np.ndarray:
    a = np.radians(primary_angle_deg)
    b = np.radians(secondary_angle_deg)
    # about z (primary), then about the rotated lateral axis (secondary)
    rz = np.array([[np.cos(a), np.sin(a), 0.0], [-np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return rz @ rx


@dataclass(frozen=True)
class Camera:
    """One C-arm pose; ``vector`` is the kernel camera layout (see ``_kernels``)."""

    source_mm: np.ndarray
    detector_centre_mm: np.ndarray
    u: np.ndarray
    v: np.ndarray
    beam: np.ndarray
    sid_mm: float
    pixel_spacing_mm: float
    size: int

    @property
    def vector(self) -> np.ndarray:
        return np.concatenate([self.source_mm, self.detector_centre_mm, self.u, self.v,
                               [self.pixel_spacing_mm, (self.size - 1) / 2.0]])

    def project(self, points_mm: np.ndarray) -> np.ndarray:
        """Pixel (x=col, y=row) of patient points, shape (..., 3) -> (..., 2)."""
        rel = np.asarray(points_mm, float) - self.source_mm
        depth = rel @ self.beam
        k = self.sid_mm / depth / self.pixel_spacing_mm
        c = (self.size - 1) / 2.0
        return np.stack([(rel @ self.u) * k + c, (rel @ self.v) * k + c], axis=-1)

    def magnification(self, points_mm: np.ndarray) -> np.ndarray:
        """SID / source-to-object distance along the central axis."""
        return self.sid_mm / ((np.asarray(points_mm, float) - self.source_mm) @ self.beam)

    def ray(self, xy: np.ndarray) -> np.ndarray:
        """Unit ray directions through pixel positions (..., 2)."""
        xy = np.asarray(xy, float)
        c = (self.size - 1) / 2.0
        p = (self.detector_centre_mm + (xy[..., :1] - c) * self.pixel_spacing_mm * self.u
             + (xy[..., 1:2] - c) * self.pixel_spacing_mm * self.v)
        d = p - self.source_mm
        return d / np.linalg.norm(d, axis=-1, keepdims=True)


def make_camera(isocentre_mm: np.ndarray, primary_angle_deg: float, secondary_angle_deg: float,
                sid_mm: float, source_to_isocenter_mm: float, field_of_view_mm: float,
                size: int) -> Camera:
    """Build the camera of an isocentric C-arm.

    Parameters
    ----------
    isocentre_mm : ndarray, shape (3,)
        Isocentre in patient coordinates.
    primary_angle_deg, secondary_angle_deg : float
        LAO(+)/RAO(-) and cranial(+)/caudal(-) angles.
    sid_mm, source_to_isocenter_mm : float
        Source-image and source-isocentre distances.
    field_of_view_mm : float
        Side of the square detector field.
    size : int
        Pixels per side.
    """
    rot = _rotation(primary_angle_deg, secondary_angle_deg)
    beam = rot @ np.array([0.0, 1.0, 0.0])
    u = rot @ np.array([1.0, 0.0, 0.0])
    v = rot @ np.array([0.0, 0.0, -1.0])
    source = np.asarray(isocentre_mm, float) - beam * source_to_isocenter_mm
    return Camera(source_mm=source, detector_centre_mm=source + beam * sid_mm, u=u, v=v,
                  beam=beam, sid_mm=float(sid_mm),
                  pixel_spacing_mm=float(field_of_view_mm) / size, size=int(size))
