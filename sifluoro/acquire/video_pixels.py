"""Frames of a DICOM run stored as video (MPEG-2, MPEG-4 AVC/H.264, HEVC transfer syntaxes).

Some C-arms send their fluoroscopy loops only this way. pydicom has no decoder for them, so
the encapsulated stream is handed to FFmpeg through OpenCV (already a dependency for video
capture). The frames are display pixels (8-bit, YBR_PARTIAL_420 as the standard requires):
their luma is the run's grey frame, read like MONOCHROME2.
"""
from __future__ import annotations

import logging
import os
import tempfile
from functools import lru_cache
from typing import Iterator

import cv2
import numpy as np
import pydicom
from pydicom.encaps import generate_fragments

from sifluoro.errors import DamagedPixelDataError
from sifluoro.model import Run

PIXEL_TAG = "(7FE0,0010) PixelData"
log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def video_decoder_available() -> bool:
    """Whether OpenCV has its FFmpeg backend (the wheels and Debian's python3-opencv do)."""
    backends = cv2.videoio_registry.getBackends()
    return any(cv2.videoio_registry.getBackendName(b) == "FFMPEG" for b in backends)


def read_video(run: Run) -> Iterator[np.ndarray]:
    """The run's frames in order, as read-only uint16 arrays of its Rows x Columns.

    FFmpeg reads a file, not bytes, so the stream (its fragments, as PS3.5 8.2.5-8.2.8
    allow it to be split) is written to a temporary file, one fragment at a time, and unlinked
    as soon as FFmpeg has it open (it reads on through its open handle): nothing is left
    behind should the reading stop half-way, even at the interpreter's exit.
    A stream that ends early or does not decode gives the frames before the damage; the run's
    other frames are then lost (their dose counted from the header), as for any damaged run.
    """
    fd, tmp = tempfile.mkstemp(prefix="sifluoro-video-", suffix=".bin")
    capture = None
    try:
        try:
            with os.fdopen(fd, "wb") as fh:
                for fragment in generate_fragments(pydicom.dcmread(run.path).PixelData):
                    fh.write(fragment)
        except Exception as exc:  # cut short, not encapsulated, or gone since the scan
            raise DamagedPixelDataError(f"the video stream cannot be read ({type(exc).__name__}"
                                        f": {exc}); send or export the run again",
                                        path=run.path, tag=PIXEL_TAG) from exc
        capture = cv2.VideoCapture(tmp, cv2.CAP_FFMPEG)
        os.unlink(tmp)
        tmp = None
        for k in range(run.n_frames):
            ok, image = capture.read() if capture.isOpened() else (False, None)
            if not ok:
                raise DamagedPixelDataError(
                    f"the video stream gives {k} of {run.n_frames} frames (ended or does not "
                    "decode); the rest are counted from the header", path=run.path, tag=PIXEL_TAG)
            grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
            if grey.shape != (run.rows, run.columns):
                raise DamagedPixelDataError(f"video frame {k + 1} is {grey.shape[1]}x"
                                            f"{grey.shape[0]}, the header says {run.columns}x"
                                            f"{run.rows}", path=run.path, tag=PIXEL_TAG)
            frame = grey.astype(np.uint16)
            frame.flags.writeable = False
            yield frame
        if capture.grab():  # the header counts fewer frames than the stream holds
            log.warning("%s: the video stream holds more frames than (0028,0008) NumberOfFrames "
                        "= %d; only those are read and counted", run.path, run.n_frames)
    finally:
        if capture is not None:
            capture.release()
        if tmp is not None:
            os.unlink(tmp)
