"""Read recorded X-ray studies: DICOM files or folders of one study → an ordered ``Study``.

Headers are read once (pixel data deferred); frames are decoded one at a time when a run is
iterated. Order comes from DICOM timing attributes, never from file names. A file that cannot
be used is listed as a ``Rejection`` with a reason naming the tag at fault; the rest goes on.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import iter_pixels
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    EnhancedXAImageStorage,
    EnhancedXRFImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)

from sifluoro.acquire import header
from sifluoro.dose.rdsr_read import is_dose_report
from sifluoro.errors import (
    DamagedPixelDataError,
    InputError,
    MissingAttributeError,
    MultipleStudiesError,
    NotDicomError,
    StudyNotFoundError,
    UnsupportedDicomError,
)
from sifluoro.model import Frame, Rejection, Run, Study

log = logging.getLogger(__name__)

IMAGE_SOP_CLASSES = {
    XRayAngiographicImageStorage: "XA",
    EnhancedXAImageStorage: "Enhanced XA",
    XRayRadiofluoroscopicImageStorage: "RF",
    EnhancedXRFImageStorage: "Enhanced XRF",
    SecondaryCaptureImageStorage: "SC",
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage: "MF SC byte",
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage: "MF SC word",
}
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True)
class ScanResult:
    """Everything found under the inputs, grouped by study."""

    runs_by_study: dict[str, list[Run]]
    rejected: list[Rejection]
    dose_reports: list[str]


def iter_input_files(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and files below folders named (sorted only to be deterministic)."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


def scan(inputs: Iterable[str | Path]) -> ScanResult:
    """Read the headers of every input file once and group the usable runs by study."""
    runs_by_study: dict[str, list[Run]] = {}
    rejected: list[Rejection] = []
    dose_reports: list[str] = []
    seen_files: set[Path] = set()
    seen_instances: dict[str, Path] = {}  # SOP Instance UID -> the file it was taken from
    for path in iter_input_files(inputs):
        if path.resolve() in seen_files:  # named twice (a folder and a file in it): read once
            continue
        seen_files.add(path.resolve())
        try:
            ds = read_header(path)
            if is_dose_report(ds):  # an RDSR, or a dose report sent as Enhanced/Comprehensive SR
                dose_reports.append(str(path))
                continue
            run = run_from_dataset(ds, path)
        except InputError as exc:
            log.info("rejected %s", exc)  # returned to the caller, who reports it
            rejected.append(Rejection(str(path), exc.reason if not exc.tag else f"{exc.tag}: {exc.reason}"))
            continue
        except Exception as exc:  # an odd header the parser did not foresee: lose only this file
            log.exception("rejected %s: unexpected header content", path)
            rejected.append(Rejection(str(path), f"header cannot be used ({type(exc).__name__}: {exc})"))
            continue
        first = seen_instances.setdefault(run.sop_instance_uid, path)
        if first != path:  # a copy: its frames and dose must not count twice
            rejected.append(Rejection(str(path), f"(0008,0018) SOPInstanceUID: the same "
                                                 f"instance as {first}, which is used"))
            continue
        runs_by_study.setdefault(run.study_instance_uid, []).append(run)
    return ScanResult(runs_by_study, rejected, dose_reports)


def read_study(inputs: Iterable[str | Path], *, study_uid: str | None = None) -> Study:
    """Read the inputs as one study, runs ordered by acquisition time.

    Parameters
    ----------
    inputs : iterable of paths
        DICOM files and/or folders (searched recursively).
    study_uid : str, optional
        Which study to take when the inputs hold several.

    Returns
    -------
    Study
        With ``rejected`` listing every file that could not be used and why.

    Raises
    ------
    MultipleStudiesError
        The inputs hold several studies and ``study_uid`` does not choose one.
    StudyNotFoundError
        ``study_uid`` is none of the inputs' studies (when they hold any).
    """
    found = scan(inputs)
    uids = sorted(found.runs_by_study)
    if study_uid is not None:
        if study_uid not in found.runs_by_study and uids:
            raise StudyNotFoundError(study_uid, uids)
        runs = found.runs_by_study.get(study_uid, [])
    elif len(uids) > 1:
        raise MultipleStudiesError(uids)
    else:
        runs = found.runs_by_study.get(uids[0], []) if uids else []
        study_uid = uids[0] if uids else ""
    rejected = list(found.rejected)
    ordered = order_runs(runs, rejected)
    return Study(study_uid, tuple(ordered), tuple(rejected), tuple(found.dose_reports))


def order_runs(runs: list[Run], rejected: list[Rejection]) -> list[Run]:
    """Sort runs by start time, set ``start_s`` relative to the first, and number them.

    With several runs, a run without any acquisition/content time cannot be placed: it is
    rejected (appended to ``rejected``) rather than guessed from its file name.
    """
    timed = [r for r in runs if r.start_s is not None and not np.isnan(r.start_s)]
    untimed = [r for r in runs if r not in timed]
    if len(runs) == 1 and untimed:
        timed, untimed = [replace(untimed[0], start_s=0.0)], []
    for run in untimed:
        rejected.append(Rejection(
            run.path,
            "(0008,002A) AcquisitionDateTime: no acquisition or content time, so the run "
            "cannot be placed in the study; export it with its timing attributes"))
    timed.sort(key=lambda r: (r.start_s, header.sort_tiebreak(r)))
    t0 = timed[0].start_s if timed else 0.0
    return [replace(r, start_s=r.start_s - t0, index=i) for i, r in enumerate(timed)]


def read_header(path: str | Path) -> Dataset:
    """A file's dataset with large values (pixel data) deferred; a typed error if unusable."""
    try:
        ds = pydicom.dcmread(path, defer_size=1024, force=False)
    except InvalidDicomError as exc:
        raise NotDicomError("not a DICOM file (no DICOM Part 10 'DICM' header); remove it from "
                            "the input", path=path) from exc
    except Exception as exc:  # the file boundary: any parse failure is this file's fault
        raise NotDicomError(f"DICOM header cannot be parsed ({type(exc).__name__}: {exc})",
                            path=path) from exc
    if len(ds) == 0:
        # pydicom gives an empty dataset when the file ends inside encapsulated pixel data
        raise DamagedPixelDataError("the file ends before its dataset is complete (an "
                                    "interrupted transfer?); send or export it again",
                                    path=path, tag="(7FE0,0010) PixelData")
    return ds


def run_from_dataset(ds: Dataset, path: str | Path) -> Run:
    """Validate one image instance's header and turn it into a ``Run`` (pixels not read).

    Raises a typed ``InputError`` naming the tag at fault when the instance cannot be used.
    """
    path = str(path)
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if not sop_class:
        raise MissingAttributeError("SOP Class UID is missing; the file is not a usable instance",
                                    path=path, tag="(0008,0016) SOPClassUID")
    if sop_class not in IMAGE_SOP_CLASSES:
        name = sop_class.name if sop_class.is_valid else sop_class
        raise UnsupportedDicomError(
            f"SOP class {name} is not an X-ray image sifluoro reads (XA, RF, Enhanced XA/XRF, "
            "Secondary Capture)", path=path, tag="(0008,0016) SOPClassUID")
    tsuid = _transfer_syntax(ds, path)
    pixel_elem = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    if pixel_elem is None:
        raise MissingAttributeError("no pixel data; the instance holds no frames",
                                    path=path, tag="(7FE0,0010) PixelData")
    fields = header.parse(ds, path)
    if not tsuid.is_compressed:
        _check_native_length(pixel_elem, fields, path)
    return Run(
        path=path,
        sop_instance_uid=fields.sop_instance_uid,
        sop_class_uid=str(sop_class),
        series_instance_uid=fields.series_instance_uid,
        study_instance_uid=fields.study_instance_uid,
        modality=fields.modality,
        transfer_syntax_uid=str(tsuid),
        rows=fields.rows,
        columns=fields.columns,
        bits_stored=fields.bits_stored,
        photometric=fields.photometric,
        start_s=fields.start_s,
        frame_offsets_s=fields.frame_offsets_s,
        frame_intervals_ms=fields.frame_intervals_ms,
        technique=fields.technique,
        device=fields.device,
        laterality=fields.laterality,
        series_number=fields.series_number,
        instance_number=fields.instance_number,
        bits_allocated=fields.bits_allocated,
        pixel_intensity_sign=fields.pixel_intensity_sign,
        pixel_intensity_relationship=fields.pixel_intensity_relationship,
        pixel_offset=None if tsuid.is_compressed else pixel_elem.value_tell,
        read_frames=_read_native if not tsuid.is_compressed else _read_encapsulated,
    )


def decoder_available(tsuid: UID) -> bool:
    """Whether pydicom has a working pixel decoder for a compressed transfer syntax (it raises
    NotImplementedError for syntaxes it has no decoder class for)."""
    try:
        return bool(get_decoder(tsuid).is_available)
    except NotImplementedError:
        return False


def _transfer_syntax(ds: Dataset, path: str) -> UID:
    meta = getattr(ds, "file_meta", None)
    tsuid = UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")
    if not tsuid:
        raise MissingAttributeError("no transfer syntax in the file meta information",
                                    path=path, tag="(0002,0010) TransferSyntaxUID")
    if not tsuid.is_transfer_syntax:
        raise UnsupportedDicomError(f"unknown transfer syntax {tsuid}; convert the file to "
                                    "Explicit VR Little Endian (e.g. dcmconv +te)",
                                    path=path, tag="(0002,0010) TransferSyntaxUID")
    if not tsuid.is_little_endian:
        raise UnsupportedDicomError(f"big-endian transfer syntax {tsuid.name} is retired; "
                                    "convert with dcmconv +te", path=path,
                                    tag="(0002,0010) TransferSyntaxUID")
    if tsuid.is_compressed and not decoder_available(tsuid):
        raise UnsupportedDicomError(f"no decoder installed for {tsuid.name}; install "
                                    "pylibjpeg or python-gdcm", path=path,
                                    tag="(0002,0010) TransferSyntaxUID")
    return tsuid


def _check_native_length(elem, fields: header.HeaderFields, path: str) -> None:
    """The pixel data holds the frames the header announces. A file cut short (an interrupted
    transfer, the header intact) passes: its whole frames, if any, are used and the rest
    rejected when they are read (:func:`iter_frames`, which also lists them as lost, so their
    dose is still counted from the header)."""
    n = len(fields.frame_offsets_s)
    frame_bytes = fields.rows * fields.columns * (fields.bits_allocated // 8)
    expected = frame_bytes * n
    length = elem.length if elem.value is None else len(elem.value)
    file_size = os.path.getsize(path)
    available = min(length, file_size - elem.value_tell) if elem.value_tell is not None else length
    if length < expected:
        raise DamagedPixelDataError(
            f"pixel data is truncated: {available} bytes for {n} frame(s) of "
            f"{fields.rows}x{fields.columns} at {fields.bits_allocated} bits ({expected} bytes "
            "expected); re-export the run", path=path, tag="(7FE0,0010) PixelData")
    if length > expected + 1:
        raise DamagedPixelDataError(
            f"pixel data has {length} bytes but (0028,0010) Rows x (0028,0011) Columns x "
            f"(0028,0008) NumberOfFrames gives {expected}: frame size does not match",
            path=path, tag="(7FE0,0010) PixelData")


def _read_native(run: Run) -> Iterator[np.ndarray]:
    """Uncompressed frames read straight into their own arrays (one allocation per frame)."""
    dtype = np.dtype("u1") if run.bits_allocated == 8 else np.dtype("<u2")
    nbytes = run.rows * run.columns * dtype.itemsize
    mask = np.uint16((1 << run.bits_stored) - 1)
    with open(run.path, "rb", buffering=0) as fh:
        for k in range(run.n_frames):
            fh.seek(run.pixel_offset + k * nbytes)
            stored = np.empty((run.rows, run.columns), dtype)
            if fh.readinto(memoryview(stored).cast("B")) != nbytes:
                raise DamagedPixelDataError(f"pixel data is truncated: the file ends in frame "
                                            f"{k + 1} of {run.n_frames}; re-export the run",
                                            path=run.path, tag="(7FE0,0010) PixelData")
            frame = stored.astype(np.uint16) if dtype.itemsize == 1 else stored
            if run.bits_stored < 16:
                frame &= mask
            frame.flags.writeable = False
            yield frame


def _read_encapsulated(run: Run) -> Iterator[np.ndarray]:
    frames = iter_pixels(run.path, raw=True)
    for k in range(run.n_frames):
        try:
            frame = next(frames)
        except StopIteration:
            raise DamagedPixelDataError(f"only {k} of {run.n_frames} frames are encoded",
                                        path=run.path, tag="(7FE0,0010) PixelData") from None
        except Exception as exc:  # any decoder failure on damaged data
            raise DamagedPixelDataError(f"frame {k + 1} fails to decode ({type(exc).__name__}: "
                                        f"{exc})", path=run.path, tag="(7FE0,0010) PixelData") from exc
        if frame.shape != (run.rows, run.columns):
            raise DamagedPixelDataError(f"frame {k + 1} decodes to {frame.shape}, expected "
                                        f"({run.rows}, {run.columns})", path=run.path,
                                        tag="(7FE0,0010) PixelData")
        frame = frame.astype(np.uint16, copy=frame.dtype != np.uint16)
        frame.flags.writeable = False
        yield frame


def iter_frames(study: Study, rejected: list[Rejection],
                lost: list[tuple[Run, int]] | None = None) -> Iterator[Frame]:
    """All frames of a study in acquisition order, decoded one at a time.

    A run whose pixel data turns out damaged while decoding is recorded in ``rejected`` (with
    how many frames were used), and in ``lost`` as ``(run, first frame number not given)``
    when its header counts more frames, and the study goes on with the next run.
    """
    index = 0
    for run in study.runs:
        used = 0
        try:
            for pixels in run.iter_pixels():
                used += 1
                yield Frame(pixels=pixels, index=index, frame_number=used,
                            t_s=run.start_s + run.frame_offsets_s[used - 1], run=run)
                index += 1
        except DamagedPixelDataError as exc:
            log.warning("damaged run %s", exc)
            note = f" (frames 1-{used} of {run.n_frames} used)" if used else ""
            rejected.append(Rejection(run.path, f"{exc.tag}: {exc.reason}{note}"))
            if lost is not None and used < run.n_frames:
                lost.append((run, used + 1))
