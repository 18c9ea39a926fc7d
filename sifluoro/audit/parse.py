"""One file → what the registry needs of it: hash, kind, study, dose, procedure, date.

Runs on a worker (process pool or Dask): everything here is picklable and needs no database.
Patient ID is read only to compute the keyed patient link; it leaves this module as an HMAC
or not at all, and the patient name is never read.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path


from sifluoro.acquire.dicom_reader import read_header, run_from_dataset
from sifluoro.audit._fastsr import CutShort, cut_short_error, parse_if_covered
from sifluoro.dose.rdsr_read import (
    META_BYTES,
    SR_CLASS_PREFIX,
    SR_SOP_CLASSES,
    names_an_sr_class,
    read_rdsr,
)
from sifluoro.dose.records import StudyDose
from sifluoro.dicom_time import wall
from sifluoro.errors import InputError
from sifluoro.model import Rejection, Run

log = logging.getLogger(__name__)

RDSR, IMAGE, REJECTED = "rdsr", "image", "rejected"
WHOLE_READ_BYTES = 8 << 20  # dose reports are small: read whole, hash and parse the bytes
UNSPECIFIED = "unspecified"

# cleaned description → procedure label; first match wins
_PROCEDURES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"\b(sij|si ?joint|si ?jt|sacro ?iliac\w*|iliosacral\w*)\b.*\b(inj\w*|infiltr\w*|block|steroid)\b"
                r"|\b(inj\w*|infiltr\w*|block)\b.*\b(sij|si ?joint|sacro ?iliac\w*)\b"), "SI joint injection"),
    (re.compile(r"\bfacet\b"), "Facet joint injection"),
    (re.compile(r"\b(epidural|esi|transforaminal)\b"), "Epidural injection"),
]


@dataclass(frozen=True)
class ParsedFile:
    """What one input file gives the registry (``kind`` says which fields are set)."""

    path: str
    sha256: str
    size_bytes: int
    kind: str  # RDSR | IMAGE | REJECTED
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    report: StudyDose | None = None
    run: Run | None = None
    procedure: str = UNSPECIFIED
    procedure_known: bool = False
    study_date: date | None = None
    patient_key: str | None = None
    reason: str = ""
    rejection: Rejection | None = None  # REJECTED by a typed error: its class and tag


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_chunk(paths: list[str], link_key: bytes | None) -> list[ParsedFile]:
    """:func:`parse_file` over a list of paths (one task of a pool or Dask worker)."""
    return [parse_file(p, link_key) for p in paths]


def parse_file(path: str | Path, link_key: bytes | None = None) -> ParsedFile:
    """Read one file: a dose report (RDSR), an X-ray image run, or a rejection with its reason.

    Never raises for a bad file: the reason is in ``ParsedFile.reason`` (naming the tag at
    fault, as :mod:`sifluoro.errors` messages do).
    """
    path = str(path)
    try:
        size = Path(path).stat().st_size
        # a report is read whole at any size: its end is what shows a copy cut short
        if size <= WHOLE_READ_BYTES or names_an_sr_class(path):
            data = Path(path).read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            fast = _fast_report(path, data, sha, link_key)
            if fast is not None:
                return fast
        else:
            sha = file_sha256(path)
    except OSError as exc:
        return ParsedFile(path, "", 0, REJECTED, reason=f"cannot be read ({exc.strerror or exc})")
    try:
        return _pydicom_file(path, sha, size, link_key)
    except InputError as exc:
        log.info("rejected %s", exc)  # the caller reports it ("not taken")
        rejection = Rejection.of(path, exc)
        return ParsedFile(path, sha, size, REJECTED, reason=rejection.reason, rejection=rejection)
    except Exception as exc:  # an odd file the readers did not foresee: lose only this file
        log.exception("rejected %s: unexpected content", path)
        return ParsedFile(path, sha, size, REJECTED,
                          reason=f"cannot be used ({type(exc).__name__}: {exc})")


def _fast_report(path: str, data: bytes, sha: str, link_key: bytes | None) -> ParsedFile | None:
    """The report through the lean parser, or None to take the pydicom path instead."""
    try:
        ds = parse_if_covered(data)
    except CutShort as exc:
        if SR_CLASS_PREFIX not in data[:META_BYTES]:
            return None  # an image: its header's dose still counts (pydicom reads it)
        # a report: pydicom would read it as far as it goes, short of events
        log.info("rejected %s: %s", path, exc)  # the caller reports it
        rejection = Rejection.of(path, cut_short_error(exc, path))
        return ParsedFile(path, sha, len(data), REJECTED, reason=rejection.reason,
                          rejection=rejection)
    if ds is None:
        return None
    if str(ds.get("SOPClassUID", "")) not in SR_SOP_CLASSES:
        return None
    try:
        report = read_rdsr(path, ds)
    except Exception:  # errors are worded from pydicom's view of the file: let it say them
        return None
    return _report_file(path, sha, len(data), ds, report, link_key)


def _pydicom_file(path: str, sha: str, size: int, link_key: bytes | None) -> ParsedFile:
    ds = read_header(path)
    if str(ds.get("SOPClassUID", "")) in SR_SOP_CLASSES:
        return _report_file(path, sha, size, ds, read_rdsr(path, ds), link_key)
    run = run_from_dataset(ds, path)
    procedure, known = procedure_label(ds)
    return ParsedFile(path, sha, size, IMAGE, sop_instance_uid=run.sop_instance_uid,
                      study_instance_uid=run.study_instance_uid, run=run, procedure=procedure,
                      procedure_known=known, study_date=_study_date(ds),
                      patient_key=patient_key(ds, link_key))


def _report_file(path: str, sha: str, size: int, ds, report: StudyDose,
                 link_key: bytes | None) -> ParsedFile:
    procedure, known = procedure_label(ds)
    study_date = _study_date(ds)
    if study_date is None:
        starts = [e.start for e in report.events if e.start is not None]
        study_date = min(wall(t) for t in starts).date() if starts else None
    return ParsedFile(path, sha, size, RDSR, sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
                      study_instance_uid=report.study_instance_uid, report=report,
                      procedure=procedure, procedure_known=known, study_date=study_date,
                      patient_key=patient_key(ds, link_key))


def procedure_label(ds) -> tuple[str, bool]:
    """A normalised procedure label from a header, and whether it is a known procedure.

    Looks at (0008,1030) StudyDescription, then (0032,1060) RequestedProcedureDescription (top
    level or in the Request Attributes Sequence), then (0040,0254)
    PerformedProcedureStepDescription. The first description matching a known procedure gives
    its label (``"SI joint injection"`` for "SIJ inj. left", "Sacroiliac joint injection"...);
    otherwise the first non-empty description, cleaned (lower case, single spaces, capital
    first letter); otherwise ``"unspecified"``.
    """
    texts = [ds.get("StudyDescription"), ds.get("RequestedProcedureDescription")]
    for item in ds.get("RequestAttributesSequence") or []:
        texts.append(item.get("RequestedProcedureDescription"))
    texts.append(ds.get("PerformedProcedureStepDescription"))
    return _label(texts)


def normalise_procedure(text: str) -> str:
    """The label :func:`procedure_label` gives a header whose only description is ``text``
    ("DSA Body" → "Dsa body", "SIJ inj. left" → "SI joint injection")."""
    return _label([text])[0]


def procedure_key(label: str) -> str:
    """A loose key to compare labels by: lower case, letters and digits only, single spaces
    (labels stored by older versions, which dropped punctuation, compare equal)."""
    return " ".join(re.sub(r"[^0-9a-zà-ÿ]+", " ", str(label).lower()).split())


def _label(texts) -> tuple[str, bool]:
    cleaned = [c for c in (_clean(t) for t in texts) if c]
    for text in cleaned:  # the patterns see words only (as they always did)
        words = procedure_key(text)
        for pattern, label in _PROCEDURES:
            if pattern.search(words):
                return label, True
    if cleaned:
        return cleaned[0][:1].upper() + cleaned[0][1:], False
    return UNSPECIFIED, False


# kept in a free-text label: a decimal mark between digits and a slash between words
# ("Kardiologisk 7,5 b/s", which became "kardiologisk 7 5 b s"; review s16 L5)
_KEPT_OR_DROPPED = re.compile(r"((?<=\d)[.,](?=\d)|(?<=[0-9a-zà-ÿ])/(?=[0-9a-zà-ÿ]))|[^0-9a-zà-ÿ]")


def _clean(value) -> str:
    if value is None:
        return ""
    text = str(value).lower().replace("-", " ").replace("_", " ")
    text = _KEPT_OR_DROPPED.sub(lambda m: m.group(1) or " ", text)
    return " ".join(text.split())[:120]


def patient_key(ds, link_key: bytes | None) -> str | None:
    """HMAC-SHA256 of (0010,0020) PatientID under the configured key (hex), or None."""
    if link_key is None:
        return None
    patient_id = str(ds.get("PatientID", "") or "").strip()
    if not patient_id:
        return None
    return hmac.new(link_key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _study_date(ds) -> date | None:
    for keyword in ("StudyDate", "SeriesDate", "ContentDate", "AcquisitionDate"):
        text = str(ds.get(keyword, "") or "").strip()
        if len(text) >= 8 and text[:8].isdigit():
            try:
                return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
            except ValueError:
                continue
    return None
