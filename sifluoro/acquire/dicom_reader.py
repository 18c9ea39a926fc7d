"""Read recorded X-ray studies: DICOM files or folders of one study → an ordered ``Study``.

Headers are read once (pixel data deferred); frames are decoded one at a time when a run is
iterated. Order comes from DICOM timing attributes, never from file names. A file that cannot
be used is listed as a ``Rejection`` with a reason naming the tag at fault; the rest goes on.
"""
from __future__ import annotations

import filecmp
import logging
import os
import stat
import struct
import zlib
from collections import Counter, defaultdict
from functools import partial
from io import BytesIO
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    UID,
    EnhancedXAImageStorage,
    EnhancedXRFImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    MediaStorageDirectoryStorage,
    MPEGTransferSyntaxes,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    RLETransferSyntaxes,
    SecondaryCaptureImageStorage,
    XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)

from sifluoro.acquire import header, pixel_readers, video_pixels
from sifluoro.dose.rdsr_read import is_dose_report, names_an_sr_class
from sifluoro.errors import (
    DamagedFileError,
    DamagedPixelDataError,
    CopiedRunError,
    InputError,
    MissingAttributeError,
    MultipleStudiesError,
    NotAnExposureError,
    NotDicomError,
    OverlappingRunError,
    StudyNotFoundError,
    UID_CHARACTERS,
    UnsupportedDicomError,
    UnsupportedPixelDataError,
    UntimedRunError,
    shown_uid,
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
#: the X-ray image classes: their pixels, when unreadable, still stand for an exposure
XRAY_SOP_CLASSES = frozenset({XRayAngiographicImageStorage, EnhancedXAImageStorage,
                              XRayRadiofluoroscopicImageStorage, EnhancedXRFImageStorage})
PIXEL_DATA = 0x7FE00010
STUDY_UID_TAG = 0x0020000D
#: attribute :func:`read_header` sets on the dataset of a file cut short: the file offset of its
#: (7FE0,0010) tag, or None when the file ends before it
CUT_SHORT = "sifluoro_cut_short_pixel_tag_at"
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # read at file offsets


@dataclass(frozen=True)
class ScanResult:
    """Everything found under the inputs, grouped by study."""

    runs_by_study: dict[str, list[Run]]
    rejected: list[Rejection]
    dose_reports: list[str]
    #: the Study Instance UIDs the dose reports name (a study given by its report alone)
    report_studies: frozenset[str] = frozenset()


#: sifluoro's own files in a receiver's spool (and replay's usual outputs): a folder walk
#: passes them by, so a spool can be given to replay, dose summary or audit ingest as it is
OWN_OUTPUT_NAMES = frozenset({"state.json", "summary.json", "events.jsonl"})


def iter_input_files(inputs: Iterable[str | Path]) -> Iterator[Path]:
    """Files named, and the regular files below folders named (sorted only to be
    deterministic), but for hidden ones and sifluoro's own outputs (:data:`OWN_OUTPUT_NAMES`).
    Linked folders are followed (archives and exports link study folders); a folder reached
    twice (a link loop, two links to one folder, or two inputs) is read once. A FIFO or device
    in a folder is passed over with a warning (reading one would wait forever), as is a folder
    that cannot be listed."""
    visited: set[str] = set()

    def unlisted(exc: OSError) -> None:
        log.warning("%s: cannot be listed (%s); its files are not read", exc.filename,
                    exc.strerror or exc)

    for item in inputs:
        path = Path(item)
        if not path.is_dir():
            yield path
            continue
        real = os.path.realpath(path)
        if real in visited:
            continue
        visited.add(real)
        for root, dirs, files in os.walk(path, followlinks=True, onerror=unlisted):
            kept = []
            for name in sorted(d for d in dirs if not d.startswith(".")):
                sub = os.path.realpath(os.path.join(root, name))
                if sub not in visited:
                    visited.add(sub)
                    kept.append(name)
            dirs[:] = kept
            for name in sorted(files):
                if name.startswith(".") or name in OWN_OUTPUT_NAMES:
                    continue
                file = Path(root) / name
                try:
                    regular = stat.S_ISREG(file.stat().st_mode)
                except OSError:  # a dangling link: said by the reader
                    regular = True
                if regular:
                    yield file
                else:
                    log.warning("%s: not a regular file (a FIFO or device); passed over", file)


def scan(inputs: Iterable[str | Path]) -> ScanResult:
    """Read the headers of every input file once and group the usable runs by study."""
    runs_by_study: dict[str, list[Run]] = {}
    rejected: list[Rejection] = []
    dose_reports: list[str] = []
    report_studies: set[str] = set()
    seen_files: set[Path] = set()
    # SOP Instance UID -> the file it was taken from and its rank (copy_rank), and its run
    seen_instances: dict[str, tuple[Path, tuple]] = {}
    first_run: dict[str, Run] = {}
    inputs = [Path(item) for item in inputs]
    for item in inputs:  # said as such: a parser's FileNotFoundError, or nothing at all
        if not item.exists():
            rejected.append(Rejection(str(item), "no such file or folder", "InputError"))
        elif item.is_dir() and next(iter_input_files([item]), None) is None:
            rejected.append(Rejection(str(item), "the folder holds no files", "InputError"))
    for path in iter_input_files(item for item in inputs if item.exists()):
        if path.resolve() in seen_files:  # named twice (a folder and a file in it): read once
            continue
        seen_files.add(path.resolve())
        try:
            ds = read_header(path)
            if is_dose_report(ds):  # an RDSR, or a dose report sent as Enhanced/Comprehensive SR
                dose_reports.append(str(path))
                if ds.get("StudyInstanceUID"):
                    report_studies.add(str(ds.StudyInstanceUID))
                continue
            run = run_from_dataset(ds, path)
        except InputError as exc:
            log.info("rejected %s", exc)  # returned to the caller, who reports it
            rejected.append(Rejection.of(path, exc))
            continue
        except Exception as exc:  # an odd header the parser did not foresee: lose only this file
            log.exception("rejected %s: unexpected header content", path)
            # typed like the rest (pydicom reads elements lazily: an unknown VR, say, is met here)
            rejected.append(Rejection.of(path, NotDicomError(
                f"DICOM header cannot be parsed ({type(exc).__name__}: {exc})", path=path)))
            continue
        rank = copy_rank(ds, path)
        earlier = seen_instances.get(run.sop_instance_uid)
        if earlier is not None:  # a copy: its frames and dose must not count twice
            first, first_rank = earlier
            if rank <= first_rank or _same_bytes(path, first):  # a plain copy: the first stays
                rejected.append(Rejection(str(path), f"(0008,0018) SOPInstanceUID: the same "
                                                     f"instance as {first}, which is used"))
                continue
            # the whole file sent again after an interrupted transfer (or a newer export)
            # replaces the copy that sorted before it
            part = first_run[run.sop_instance_uid]
            runs = runs_by_study[part.study_instance_uid]
            runs[:] = [r for r in runs if r is not part]
            rejected.append(Rejection(str(first), f"(0008,0018) SOPInstanceUID: the same "
                                                  f"instance as {path}, which is used"))
        seen_instances[run.sop_instance_uid] = (path, rank)
        first_run[run.sop_instance_uid] = run
        runs_by_study.setdefault(run.study_instance_uid, []).append(run)
    runs_by_study = {uid: runs for uid, runs in runs_by_study.items() if runs}
    _join_cut_study_uids(runs_by_study)
    for uid, runs in runs_by_study.items():
        runs_by_study[uid], copies = without_copied_runs(runs)
        rejected += copies
    return ScanResult(runs_by_study, rejected, dose_reports, frozenset(report_studies))


def _join_cut_study_uids(runs_by_study: dict[str, list[Run]]) -> None:
    """A file cut inside its header (an interrupted transfer) may end inside its
    StudyInstanceUID: the UID read is then the start of its study's. Such files, when their
    UID is the start of exactly one other study's in the input, join that study (their dose,
    from the header read, counted there as lost frames) rather than make a study that does not
    exist: replay refused the input as two studies, dose summary showed two (review s19 U1)."""
    for uid in [u for u, runs in runs_by_study.items() if all(r.study_uid_cut for r in runs)]:
        whole = [u for u in runs_by_study if u != uid and u.startswith(uid)]
        if len(whole) != 1:
            continue
        for run in runs_by_study.pop(uid):
            log.warning("%s: cut inside its header, its (0020,000D) StudyInstanceUID read as the "
                        "start of %s's: taken as that study's", run.path, shown_uid(whole[0]))
            runs_by_study[whole[0]].append(replace(run, study_instance_uid=whole[0]))


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def copy_rank(ds: Dataset, path: Path) -> tuple[bool, int, int]:
    """Which of two files of one instance is used: a whole one over one cut short (whatever
    their transfer syntaxes), then the newer, then the longer (``audit ingest`` too)."""
    try:
        stat = path.stat()
    except OSError:
        return (False, 0, 0)
    whole = not hasattr(ds, CUT_SHORT)
    elem = ds.get_item(PIXEL_DATA, keep_deferred=True) if whole and PIXEL_DATA in ds else None
    tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
    if tell is not None and length is not None and length != 0xFFFFFFFF:
        whole = tell + length <= stat.st_size  # native pixel data wholly in the file
    return (whole, stat.st_mtime_ns, stat.st_size)


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
    rejected = list(found.rejected)
    if study_uid is None and len(found.runs_by_study) > 1:
        _reject_damaged_study_uids(found.runs_by_study, rejected)
    # a study given by its dose report alone is that report's study (its dose, no frames)
    uids = sorted(found.runs_by_study) or sorted(found.report_studies)
    if study_uid is not None:
        study_uid = _whole_uid(study_uid, set(found.runs_by_study) | set(found.report_studies))
        if study_uid not in found.runs_by_study and study_uid not in found.report_studies \
                and uids:
            raise StudyNotFoundError(study_uid, uids)
        runs = found.runs_by_study.get(study_uid, [])
    elif len(uids) > 1:
        raise MultipleStudiesError(uids)
    else:
        runs = found.runs_by_study.get(uids[0], []) if uids else []
        study_uid = uids[0] if uids else ""
    ordered = order_runs(runs)
    return Study(study_uid, tuple(ordered), tuple(rejected), tuple(found.dose_reports))


#: the fewest characters of a UID's end that choose its study (``dose summary`` shows
#: "…" and the last 27)
MIN_UID_SUFFIX = 8


def _whole_uid(asked: str, present: set[str]) -> str:
    """``asked`` itself when it is one of ``present``; else the one UID of ``present`` that
    ends with it (a leading "…" or "..." dropped: as ``dose summary`` shows UIDs), when it is
    at least :data:`MIN_UID_SUFFIX` characters; else ``asked``. Raises
    :class:`StudyNotFoundError` naming them when several end so."""
    if asked in present:
        return asked
    tail = asked.removeprefix("…").removeprefix("...")
    ends = sorted(u for u in present if u.endswith(tail)) if len(tail) >= MIN_UID_SUFFIX else []
    if len(ends) > 1:
        raise StudyNotFoundError(asked, ends, ambiguous=True)
    return ends[0] if ends else asked


def _reject_damaged_study_uids(runs_by_study: dict[str, list[Run]],
                               rejected: list[Rejection]) -> None:
    """Beside studies whose UIDs are UIDs, one file whose UID holds other characters than
    digits and dots is a damaged file (a flipped bit), not a study: it is rejected rather than
    the whole input refused as several studies. Alone, an odd UID is still read; so is one
    that several files share (a real study, if an ill-formed one: review s17 M1), or one only
    too long (some systems write them)."""
    damaged = [uid for uid, runs in runs_by_study.items()
               if len(runs) == 1 and not set(uid) <= UID_CHARACTERS]
    if not damaged or len(damaged) == len(runs_by_study):
        return
    for uid in damaged:
        for run in runs_by_study.pop(uid):
            rejected.append(Rejection.of(run.path, InputError(
                f"{shown_uid(uid)} is not a UID, beside the study {', '.join(sorted(runs_by_study))}"
                ": the file is damaged; send or export it again", path=run.path,
                tag="(0020,000D) StudyInstanceUID")))


def order_runs(runs: list[Run]) -> list[Run]:
    """Sort runs by start time, set ``start_s`` relative to the first, and number them.

    With several runs, a run without any acquisition/content time cannot be placed, nor
    guessed from its file name: its frames are not shown (:func:`untimed_run`) and it goes
    after the others, where its frames' dose is counted as lost (its frames say why when they
    are read).
    """
    timed = [r for r in runs if r.start_s is not None and not np.isnan(r.start_s)]
    untimed = [r for r in runs if r not in timed]
    if all(carries_offset(r) for r in timed):
        # instants: across a DST fall-back the wall clock put a run 20 min later 40 min earlier
        timed = [replace(r, start_s=r.started_at.timestamp()) for r in timed]
    if len(runs) == 1 and untimed:
        timed, untimed = [replace(untimed[0], start_s=0.0)], []
    timed.sort(key=lambda r: (r.start_s, header.sort_tiebreak(r)))
    t0 = timed[0].start_s if timed else 0.0
    placed: list[Run] = []
    for run in timed:
        run = replace(run, start_s=run.start_s - t0)
        placed.append(overlap_checked(run, placed))
    end_s = max((run_end_s(r) for r in placed), default=0.0)
    placed += [untimed_run(r, end_s) for r in sorted(untimed, key=header.sort_tiebreak)]
    return [replace(r, index=i) for i, r in enumerate(placed)]


def carries_offset(run: Run) -> bool:
    """Whether ``run``'s start is an instant (its header gives a UTC offset): runs that all
    carry one are ordered and spaced as instants, others on the devices' wall clock."""
    return run.started_at is not None and run.started_at.utcoffset() is not None


def without_copied_runs(runs: list[Run]) -> tuple[list[Run], list[Rejection]]:
    """``runs`` without the copies of others among them (:func:`original_of`) and the saved
    screens beside X-ray runs (:func:`is_saved_screen`), and their rejections: a processed
    copy of a run, or the run exported again under other UIDs, holds the same exposure and its
    header the same technique, so its dose would count twice (and its frames go back in time);
    a saved screen is no exposure, and was counted as one of unknown dose."""
    originals = [r for r in runs if not r.derived]
    by_exposure = defaultdict(list)  # the candidates of the same exposure: no n² scan
    for r in originals:
        by_exposure[_exposure_key(r)].append(r)
    copies = {}
    for run in runs:
        original = original_of(run, originals if run.derived else by_exposure[_exposure_key(run)])
        if original is not None:
            copies[id(run)] = copied_run_rejection(run, original)
    kept = [r for r in runs if id(r) not in copies]
    series = Counter(r.series_instance_uid for r in kept)
    xray = any(r.sop_class_uid in XRAY_SOP_CLASSES for r in kept)
    for run in kept:
        if xray and series[run.series_instance_uid] == 1 and is_saved_screen(run):
            copies[id(run)] = saved_screen_rejection(run)
    return [r for r in runs if id(r) not in copies], list(copies.values())


def is_saved_screen(run: Run) -> bool:
    """Whether ``run``, alone in its series beside the study's X-ray runs (the caller's part),
    is a saved screen or key image: one frame of Secondary Capture with no exposure attribute
    (kV, mA, mAs, pulse, dose). Alone in the study, or one of a series (a loop stored a frame
    a file), such an image may be the only record of an exposure, and is read."""
    tech = run.technique
    return (run.sop_class_uid not in XRAY_SOP_CLASSES and run.n_frames == 1
            and all(v is None for v in (tech.kvp, tech.tube_current_ma, tech.exposure_mas,
                                        tech.pulse_width_ms, tech.exposure_time_ms,
                                        tech.reported_dap_gycm2, tech.reported_air_kerma_mgy)))


def saved_screen_rejection(run: Run) -> Rejection:
    return Rejection.of(run.path, NotAnExposureError(
        "one frame of Secondary Capture with no exposure attribute, alone in its series, beside "
        "the study's X-ray runs: a saved screen or key image, not an exposure (neither shown nor "
        "counted)", path=run.path, tag="(0008,0016) SOPClassUID"))


def original_of(run: Run, others: Iterable[Run], *, arrived_before: bool = False) -> Run | None:
    """The run of ``others`` (same clock) that ``run`` copies, or None:

    - ``run`` is DERIVED and names it in its Source Image Sequence with the same frame times
      (a roadmap naming its mask is a new exposure), or was taken over part of its time on the
      same device. A derived run alone in its time (a screen capture, the only record of that
      exposure) is no copy; nor is a copy of a copy the original;
    - or ``run`` is the same exposure under other UIDs (an anonymiser or a PACS remap run
      twice): another series, but the same series and instance numbers, ImageType (a biplane's
      plane), device, start, frame times and technique; the one whose UID sorts first is
      kept, or with ``arrived_before`` (``others`` came before ``run``: the receiver) the one
      that came first. Two instances of one series (a loop stored a frame a file) are never
      copies.
    """
    others = [r for r in others if r is not run and not r.derived]
    if not run.derived:
        same = [r for r in others if _same_exposure(r, run)
                and (arrived_before or header.sort_tiebreak(r) < header.sort_tiebreak(run))]
        return min(same, key=header.sort_tiebreak, default=None)
    named = [r for r in others if r.sop_instance_uid in run.source_sop_uids
             and r.frame_offsets_s == run.frame_offsets_s]
    if named:
        return named[0]
    if run.start_s is None or np.isnan(run.start_s):
        return None
    return next((r for r in others if r.start_s is not None and not np.isnan(r.start_s)
                 and r.device == run.device
                 and r.start_s <= run_end_s(run) and run.start_s <= run_end_s(r)), None)


def _exposure_key(run: Run) -> tuple:
    return run.series_number, run.instance_number, run.start_s


def _same_exposure(a: Run, b: Run) -> bool:
    return (a.series_instance_uid != b.series_instance_uid
            and a.series_number is not None and a.instance_number is not None
            and (a.series_number, a.instance_number) == (b.series_number, b.instance_number)
            and a.image_type == b.image_type and a.device == b.device
            and a.start_s is not None and a.start_s == b.start_s
            and a.frame_offsets_s == b.frame_offsets_s and a.technique == b.technique)


def copied_run_rejection(run: Run, original: Run) -> Rejection:
    """Why ``run``, a copy of ``original``, is not used."""
    name = Path(original.path).name
    if not run.derived:
        why, tag = (f"the same exposure as {name} (the same series and instance numbers, start, "
                    "frames and technique in another series: exported again or remapped)"), \
            "(0008,0018) SOPInstanceUID"
    else:
        how = ("names as its source" if original.sop_instance_uid in run.source_sop_uids
               else "was taken over the time of")
        why, tag = f"DERIVED: an image made from {name}, which it {how}", "(0008,0008) ImageType"
    return Rejection.of(run.path, CopiedRunError(
        f"{why}: its frames and dose are that run's and count once", path=run.path, tag=tag))


def copy_came_first_rejection(run: Run, copy: Run) -> Rejection:
    """Why ``run``, received after ``copy`` (a DERIVED image made from it, already shown and
    counted: the receiver), is not used."""
    return Rejection.of(run.path, CopiedRunError(
        f"received after {Path(copy.path).name}, a DERIVED image made from it, which was shown "
        "and counted first: its frames and dose count once", path=run.path,
        tag="(0008,0018) SOPInstanceUID"))


def run_end_s(run: Run) -> float:
    """When the run's last frame was taken (the study's clock, as ``start_s``)."""
    return run.start_s + run.frame_offsets_s[-1]


def overlap_checked(run: Run, earlier: Iterable[Run]) -> Run:
    """``run``, or, when it starts before the last frame of a run shown before it, ``run``
    with its frames refused: its frames would run backwards in time (docs/contract.md §3) and
    one plane cannot expose two runs at once, so a header is wrong or the run is a copy. Its
    dose is counted all the same (a second plane's exposure is real); its rejection names the
    other file."""
    first = max((r for r in earlier if not r.frames_refused), key=run_end_s, default=None)
    if first is None or run.start_s >= run_end_s(first):
        return run
    return _with_frames_refused(
        run, f"it starts before the last frame of {Path(first.path).name} (at "
             f"{run.start_s:+.3f} s, against {run_end_s(first):+.3f} s): one plane cannot "
             "expose two runs at once (a second plane, a copy or a wrong clock), and "
             "its frames would go back in time", OverlappingRunError)


def untimed_run(run: Run, start_s: float) -> Run:
    """``run``, which has no acquisition or content time, put at ``start_s`` (the study's
    end) with its frames refused: none is shown, their dose counted from the header."""
    return _with_frames_refused(
        replace(run, start_s=start_s),
        "no acquisition or content time, so the run cannot be placed in the study (its dose "
        "is counted at the study's end); export it with its timing attributes", UntimedRunError)


def _with_frames_refused(run: Run, why: str, error: type) -> Run:
    """``run`` placed as it is but with none of its frames shown, for ``why`` (its timing:
    (0008,002A) is named), their dose counted from the header."""
    return replace(run, frames_refused=True, read_frames=partial(
        pixel_readers.read_refused, tag="(0008,002A) AcquisitionDateTime", why=why,
        error=error))


def read_header(path: str | Path) -> Dataset:
    """A file's dataset with large values (pixel data) deferred; a typed error if unusable.

    A file cut short (an interrupted transfer) keeps its header when that is whole: pydicom
    gives nothing for a file that ends inside encapsulated pixel data, so the header is read
    again up to (7FE0,0010). Such a dataset, and an image one without pixel data (the file ends
    before it), is marked (:data:`CUT_SHORT`) so that :func:`run_from_dataset` keeps the run:
    its whole frames are shown and the rest counted as lost, dose from the header.
    """
    failure: Exception | None = None
    try:
        ds = pydicom.dcmread(path, defer_size=1024, force=False)
    except InvalidDicomError as exc:
        ds = _dataset_without_preamble(path)
        if ds is None:
            raise NotDicomError("not a DICOM file (no DICOM Part 10 'DICM' header)",
                                path=path) from exc
        return ds
    except Exception as exc:  # the file boundary: any parse failure is this file's fault
        ds, failure = None, exc
    if ds is not None and len(ds) and PIXEL_DATA in ds:
        return ds
    if ds is not None and len(ds):  # the file ends before its pixel data, or never had any
        if UID(str(ds.get("SOPClassUID", ""))) in IMAGE_SOP_CLASSES:
            setattr(ds, CUT_SHORT, None)
        return ds
    cut, pixel_tag_at = _header_before_pixels(path)
    if cut is None:
        inflated = _deflated_header_before_pixels(path)
        if inflated is not None:  # deflated and cut short: its frames are lost, not its dose
            setattr(inflated, CUT_SHORT, None)
            return inflated
        if failure is not None:
            raise NotDicomError(f"DICOM header cannot be parsed ({type(failure).__name__}: "
                                f"{failure})", path=path) from failure
        if names_an_sr_class(path):  # a dose report has no pixel data to name
            raise DamagedFileError("the file ends before its dataset is complete: the file is "
                                   "cut short (an interrupted copy) or damaged; copy it again",
                                   path=path)
        raise DamagedPixelDataError("the file ends before its dataset is complete (an "
                                    "interrupted transfer?); send or export it again",
                                    path=path, tag="(7FE0,0010) PixelData")
    setattr(cut, CUT_SHORT, pixel_tag_at)
    return cut


def _dataset_without_preamble(path: str | Path) -> Dataset | None:
    """A dataset written without the Part 10 preamble and file meta header (older systems
    and some archives store them so; pydicom reads them only when forced), or None. Only a
    file that starts with an Identifying group (0008,xxxx) element is tried, so that other
    files are not parsed as DICOM; the transfer syntax is the one pydicom found (implicit or
    explicit VR, little or big endian), set in a file meta of its own."""
    try:
        with open(path, "rb") as fh:
            start = fh.read(4)
        little_start = start[:2] == b"\x08\x00" and int.from_bytes(start[2:], "little") <= 0x0100
        big_start = start[:2] == b"\x00\x08" and int.from_bytes(start[2:], "big") <= 0x0100
        if len(start) < 4 or not (little_start or big_start):
            return None
        ds = pydicom.dcmread(path, defer_size=1024, force=True)
        if not len(ds) or "SOPClassUID" not in ds or PIXEL_DATA not in ds:
            return None
        implicit, little = ds.original_encoding
        pixels = ds.get_item(PIXEL_DATA, keep_deferred=True)
    except Exception:  # not DICOM after all
        return None
    if getattr(pixels, "length", None) == 0xFFFFFFFF:  # encapsulated: compressed, in a syntax
        raise UnsupportedDicomError(
            "compressed (encapsulated) pixel data without the Part 10 file meta, which names "
            "its transfer syntax: it cannot be decoded; re-export the file with its file meta",
            path=path, tag="(0002,0010) TransferSyntaxUID")
    syntax = (ImplicitVRLittleEndian if implicit else
              ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    log.warning("%s: no DICOM Part 10 preamble and file meta header (an older system's file): "
                "read as %s", path, syntax.name)
    return ds


def _deflated_header_before_pixels(path: str | Path) -> Dataset | None:
    """The dataset up to (7FE0,0010) of a Deflated Explicit VR Little Endian file cut short,
    inflated as far as its bytes go (pydicom gives nothing for a cut deflate stream), or None."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        start = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)  # preamble, DICM, group
        with open(path, "rb") as fh:
            fh.seek(start)
            body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fh.read())
        ds = pydicom.filereader.read_dataset(
            BytesIO(body), is_implicit_VR=False, is_little_endian=True,
            stop_when=lambda tag, vr, length: tag == PIXEL_DATA)
    except Exception:  # not deflated, or damaged before its pixel data: nothing to keep
        return None
    if not len(ds) or UID(str(ds.get("SOPClassUID", ""))) not in IMAGE_SOP_CLASSES:
        return None
    ds.file_meta = meta
    return ds


def _header_before_pixels(path: str | Path) -> tuple[Dataset | None, int | None]:
    """The dataset up to (7FE0,0010) and the file offset of that tag (None when the file ends
    before the whole tag), or ``(None, None)`` when even that cannot be read."""
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=False)
            at = fh.tell()  # pydicom steps back to the tag it stopped at
            fh.seek(at)
            tag = fh.read(4)
    except Exception:  # the header itself is damaged: nothing to keep
        return None, None
    if not len(ds):
        return None, None
    return ds, at if tag == b"\xe0\x7f\x10\x00" else None


def _study_uid_cut(ds: Dataset) -> bool:
    """Whether the file ends inside its StudyInstanceUID's value (fewer bytes read than its
    length says): the UID read is then the start of its study's. A whole UID that happens to
    start another study's (``...777.5`` and ``...777.51``) is not (review s20 I1)."""
    elem = ds.get_item(STUDY_UID_TAG) if STUDY_UID_TAG in ds else None
    if isinstance(elem, RawDataElement):
        return elem.value is not None and elem.length is not None and len(elem.value) < elem.length
    return elem is not None and max(ds.keys()) == STUDY_UID_TAG  # the last element read


def run_from_dataset(ds: Dataset, path: str | Path) -> Run:
    """Validate one image instance's header and turn it into a ``Run`` (pixels not read).

    Raises a typed ``InputError`` naming the tag at fault when the instance cannot be used.
    """
    path = str(path)
    header_cut = False
    study_uid_cut = _study_uid_cut(ds)  # before anything converts the raw element
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if not sop_class:
        if UID(str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", ""))) \
                == MediaStorageDirectoryStorage:
            raise UnsupportedDicomError("a DICOMDIR (the media's index, no image): the files it "
                                        "lists are read when their folder is given",
                                        path=path, tag="(0002,0002) MediaStorageSOPClassUID")
        raise MissingAttributeError("SOP Class UID is missing; the file is not a usable instance",
                                    path=path, tag="(0008,0016) SOPClassUID")
    if sop_class not in IMAGE_SOP_CLASSES:
        name = sop_class.name if sop_class.is_valid else shown_uid(sop_class)
        raise UnsupportedDicomError(
            f"SOP class {name} is not an X-ray image sifluoro reads (XA, RF, Enhanced XA/XRF, "
            "Secondary Capture)", path=path, tag="(0008,0016) SOPClassUID")
    try:
        tsuid, syntax_refused = _transfer_syntax(ds, path), None
    except UnsupportedDicomError as exc:  # pixels sifluoro cannot decode; the exposure happened
        tsuid = UID(str(ds.file_meta.TransferSyntaxUID))
        syntax_refused = (exc.tag, exc.reason, UnsupportedPixelDataError)
    pixel_elem = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    cut_short = hasattr(ds, CUT_SHORT)  # only read_header sets it, on a file that ends early
    if pixel_elem is None and not cut_short:
        raise MissingAttributeError("no pixel data; the instance holds no frames",
                                    path=path, tag="(7FE0,0010) PixelData")
    pixel_tag_at = getattr(ds, CUT_SHORT, None)
    if syntax_refused is not None:  # frames from the header (NumberOfFrames, capped)
        fields = header.parse(ds, path)
        offset, reader = None, None  # read_refused, below
    elif pixel_elem is not None and tsuid in MPEGTransferSyntaxes:
        # one stream for all frames: its fragments are no frame count
        fields = header.parse(ds, path, video=True)
        offset, reader = pixel_elem.value_tell, video_pixels.read_video
    elif pixel_elem is not None:
        fragments, frames_held = _fragment_count(pixel_elem, tsuid, path)
        fields = header.parse(ds, path, pixel_bytes=_pixel_bytes(pixel_elem, tsuid),
                              fragments=fragments, frames_held=frames_held)
        if not tsuid.is_compressed and not fields.pixels_refused:  # refused: no frame is read
            mismatch = _native_length_mismatch(pixel_elem, fields, path)
            if mismatch:  # frames unreadable; the exposures the header counts are kept (lost
                # frames, header dose), not bounded by a data length that does not fit
                fields = replace(header.parse_again(ds, path), pixels_refused=mismatch)
        offset, reader = pixel_elem.value_tell, (
            pixel_readers.read_native if tsuid in NATIVE_SYNTAXES else
            pixel_readers.read_deflated if tsuid == DeflatedExplicitVRLittleEndian else
            pixel_readers.read_encapsulated)
    elif cut_short and tsuid == DeflatedExplicitVRLittleEndian:  # no frame in a cut stream
        fields = header.parse(ds, path)
        offset, reader = None, pixel_readers.read_deflated
    elif pixel_tag_at is not None:  # cut inside the pixel data: only the cap holds NumberOfFrames
        fields = header.parse(ds, path)
        if ds.get("NumberOfFrames") in (None, "") and len(fields.frame_offsets_s) == 1:
            log.warning("%s: (0028,0008) NumberOfFrames is missing and the file is cut short "
                        "inside its pixel data: one frame is counted, and the run's dose may "
                        "be short of frames after the cut", path)
        if tsuid in NATIVE_SYNTAXES:  # value after tag, VR and length (explicit) or tag, length
            offset = pixel_tag_at + (8 if tsuid == ImplicitVRLittleEndian else 12)
            reader = pixel_readers.read_native
        else:
            offset, reader = pixel_tag_at, pixel_readers.read_encapsulated_cut
    else:  # the file ends before its pixel data
        header_cut = True
        cut = ("the file ends before its pixel data, so it was most likely cut short inside "
               "its header (an interrupted transfer?); send or export it again")
        try:
            fields = header.parse(ds, path)
        except MissingAttributeError as exc:  # most likely cut inside its header: say so
            raise DamagedPixelDataError(f"{exc.reason}: {cut}", path=path, tag=exc.tag) from exc
        if fields.rows == 0:  # its size cut off: the dose before it is kept
            tag, why, _ = fields.pixels_refused
            fields = replace(fields, pixels_refused=(tag, f"{why}: {cut}", DamagedPixelDataError))
        offset, reader = None, pixel_readers.read_none
    refused = syntax_refused or fields.pixels_refused
    if refused:
        tag, why, error = refused
        if error is UnsupportedPixelDataError and sop_class not in XRAY_SOP_CLASSES:
            # a colour screenshot or dose page is no exposure: refused whole, as before
            raise UnsupportedDicomError(why, path=path, tag=tag)
        reader = partial(pixel_readers.read_refused, tag=tag, why=why, error=error)
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
        modality_lut_inverts=fields.modality_lut_inverts,
        start_s=fields.start_s,
        started_at=fields.started_at,
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
        pixel_offset=offset,
        timing_unknown=fields.timing_unknown,
        header_cut=header_cut,
        study_uid_cut=header_cut and study_uid_cut,
        frames_refused=bool(refused),
        image_type=_image_type(ds),
        source_sop_uids=_source_sop_uids(ds),
        read_frames=reader,
    )


def _image_type(ds: Dataset) -> tuple[str, ...]:
    """(0008,0008) ImageType's values, upper case; () when absent or unreadable."""
    try:
        value = ds.get("ImageType")
        values = [value] if isinstance(value, str) else list(value or [])
        return tuple(str(v).strip().upper() for v in values)
    except Exception:  # a damaged value: the image is taken as an original
        return ()


def _source_sop_uids(ds: Dataset) -> tuple[str, ...]:
    """The instances (0008,2112) Source Image Sequence names (also inside a Derivation Image
    Sequence, as an enhanced image gives them); () when it names none or cannot be read."""
    try:
        items = list(ds.get("SourceImageSequence") or [])
        for derivation in ds.get("DerivationImageSequence") or []:
            items += list(derivation.get("SourceImageSequence") or [])
        return tuple(str(i.ReferencedSOPInstanceUID) for i in items
                     if i.get("ReferencedSOPInstanceUID"))
    except Exception:  # a damaged sequence names nothing usable
        return ()


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
        raise UnsupportedDicomError(f"unknown transfer syntax {shown_uid(tsuid)}; convert the file to "
                                    "Explicit VR Little Endian (e.g. dcmconv +te)",
                                    path=path, tag="(0002,0010) TransferSyntaxUID")
    if not tsuid.is_little_endian:
        raise UnsupportedDicomError(f"big-endian transfer syntax {tsuid.name} is retired; "
                                    "convert with dcmconv +te", path=path,
                                    tag="(0002,0010) TransferSyntaxUID")
    if tsuid in MPEGTransferSyntaxes:
        if video_pixels.video_decoder_available():
            return tsuid
        raise UnsupportedDicomError(f"{tsuid.name} is a video transfer syntax and this OpenCV "
                                    "has no FFmpeg backend to decode it; install opencv-python "
                                    "(or python3-opencv) or transcode the run to an image syntax",
                                    path=path, tag="(0002,0010) TransferSyntaxUID")
    if tsuid.is_compressed and not decoder_available(tsuid):
        raise UnsupportedDicomError(f"no decoder installed for {tsuid.name}; install "
                                    "pylibjpeg or python-gdcm", path=path,
                                    tag="(0002,0010) TransferSyntaxUID")
    return tsuid


def _native_length_mismatch(elem, fields: header.HeaderFields,
                            path: str) -> tuple[str, str, type] | None:
    """Whether native pixel data is longer than the frames the header gives, so that its
    frames cannot be trusted to be cut from it. Padding under one row is read (warned).
    Anything longer (another Rows, Columns or BitsAllocated, a NumberOfFrames that is wrong or
    missing, a partial frame: they cannot be told apart, and a wrong frame size cuts every
    frame at the wrong place) shows no frame; but the run's exposure happened: its frames are
    lost frames, their dose from the header (the whole instance was refused, its dose lost).
    A file cut short passes here: its whole frames are used and the rest listed as lost when
    read (:func:`iter_frames`)."""
    row_bytes = fields.columns * (fields.bits_allocated // 8)
    expected = fields.rows * row_bytes * len(fields.frame_offsets_s)
    extra = _declared_length(elem) - expected
    if extra <= 1:  # an odd length's pad byte
        return None
    if extra < row_bytes:
        log.warning("%s: (7FE0,0010) PixelData has %d bytes of padding after its frames",
                    path, extra)
        return None
    return ("(7FE0,0010) PixelData",
            f"pixel data has {expected + extra} bytes but (0028,0010) Rows x (0028,0011) "
            f"Columns x (0028,0008) NumberOfFrames x (0028,0100) BitsAllocated gives {expected}: "
            "one of them is wrong, so the frames cannot be cut from it", DamagedPixelDataError)


def _pixel_bytes(elem, tsuid: UID) -> int | None:
    """The declared length of native (or deflated) pixel data; None for encapsulated."""
    return None if tsuid.is_compressed else _declared_length(elem)


def _declared_length(elem) -> int:
    return elem.length if elem.value is None else len(elem.value)


#: JPEG, JPEG-LS and JPEG 2000 codestreams end with EOI / EOC (FF D9)
_ENDS_WITH_MARKER = JPEGTransferSyntaxes + JPEGLSTransferSyntaxes + JPEG2000TransferSyntaxes


def _fragment_count(elem, tsuid: UID, path: str) -> tuple[int | None, int | None]:
    """How many fragments (items after the Basic Offset Table) encapsulated pixel data holds,
    and how many frames they hold as pydicom splits them: an offset per frame in a Basic
    Offset Table; else a non-empty fragment per frame in RLE; else, in the JPEG families, a
    frame ends with the fragment that holds the FF D9 marker in its last 10 bytes (fragments
    after the last such are one more frame); None for other syntaxes. Read item header by
    item header from the file; (None, None) when not encapsulated, or not known (a value in
    memory, or no sequence delimiter before the file ends)."""
    if not tsuid.is_compressed or elem.value_tell is None or elem.value is not None:
        return None, None
    count, frames, open_frame, bot_frames = -1, 0, False, None  # item -1: the offset table
    with open(path, "rb") as fh:
        fh.seek(elem.value_tell)
        while True:
            item = fh.read(8)
            if len(item) < 8:
                return None, None
            group, element, length = struct.unpack("<HHL", item)
            if (group, element) == (0xFFFE, 0xE0DD):
                count = max(count, 0)
                if bot_frames:
                    return count, bot_frames
                if tsuid in RLETransferSyntaxes:
                    return count, frames
                return count, (frames + open_frame if tsuid in _ENDS_WITH_MARKER else None)
            if (group, element) != (0xFFFE, 0xE000):
                return None, None
            if count >= 0 and tsuid in _ENDS_WITH_MARKER and length:
                tail = pixel_readers.FRAME_END_TAIL_BYTES
                fh.seek(max(length - tail, 0), os.SEEK_CUR)
                ends = pixel_readers.ends_a_frame(fh.read(min(length, tail)))
                frames, open_frame = frames + ends, not ends
            else:
                if count < 0:
                    bot_frames = length // 4 if length % 4 == 0 else None
                else:  # RLE: a frame per fragment that holds one
                    frames += length > 0
                fh.seek(length, os.SEEK_CUR)
            count += 1


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
            log.warning("frames not shown: %s", exc)
            note = f" (frames 1-{used} of {run.n_frames} used)" if used else ""
            rejected.append(Rejection.of(run.path, exc, note))
            if lost is not None and used < run.n_frames:
                lost.append((run, used + 1))
