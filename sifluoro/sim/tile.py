"""Contact sheet of simulated frames (for the README and for looking at the simulator)."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from sifluoro.sim.records import SimStudy


def _to8(frame: np.ndarray, bits_stored: int) -> np.ndarray:
    """Stored values to 8 bits, as stored (MONOCHROME1 frames therefore look inverted)."""
    return np.clip(frame.astype(np.float32) * (255.0 / ((1 << bits_stored) - 1)), 0,
                   255).astype(np.uint8)


def _pick(study: SimStudy) -> list[tuple[np.ndarray, str]]:
    """A few telling frames of a study: scout, needle, last contrast frame."""
    out = []
    for i, run in enumerate(study.runs):
        t = run.truth[-1]
        if i == 0 or i == len(study.runs) - 1 or (t.end_on and i == len(study.runs) - 2):
            f = len(run.frames) - 1
            label = (f"s{study.seed} c{study.case} r{i} {run.photometric[-1]} "
                     f"{run.technique.detector[0]} {t.contrast_state}"
                     f"{' dbl' if t.joint_doubled else ''}{' endon' if t.end_on else ''}")
            out.append((_to8(run.frames[f], run.bits_stored), label))
    return out


def render_tile(studies_or_frames: Sequence[SimStudy] | Sequence[np.ndarray], path: str, *,
                tile_px: int = 256, columns: int = 4, bits_stored: int = 16) -> np.ndarray:
    """Write a labelled grid of frames to an image file.

    Parameters
    ----------
    studies_or_frames : sequence of SimStudy or of 2-D arrays
        Studies (scout, last needle and last contrast frames are shown) or frames (shown as
        stored, scaled from ``bits_stored``).
    path : str
        Output image path (any format cv2.imwrite knows, e.g. PNG).
    tile_px : int
        Side of each tile in pixels.
    columns : int
        Tiles per row.
    bits_stored : int
        Bit depth of raw frames (ignored for studies).

    Returns
    -------
    ndarray
        The 8-bit tile image that was written.
    """
    items: list[tuple[np.ndarray, str]] = []
    for obj in studies_or_frames:
        if isinstance(obj, SimStudy):
            items.extend(_pick(obj))
        else:
            items.append((_to8(np.asarray(obj), bits_stored), ""))
    rows = max((len(items) + columns - 1) // columns, 1)
    sheet = np.zeros((rows * tile_px, columns * tile_px), np.uint8)
    for k, (img, label) in enumerate(items):
        r, c = divmod(k, columns)
        small = cv2.resize(img, (tile_px, tile_px), interpolation=cv2.INTER_AREA)
        if label:
            cv2.putText(small, label, (3, tile_px - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.33, 0, 3)
            cv2.putText(small, label, (3, tile_px - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.33, 255, 1)
        sheet[r * tile_px:(r + 1) * tile_px, c * tile_px:(c + 1) * tile_px] = small
    if not cv2.imwrite(path, sheet):
        raise OSError(f"could not write {path}")
    return sheet
