"""Typed errors. Every message names the file, the DICOM tag and keyword at fault, and the remedy.

Hierarchy::

    SifluoroError
    ├── InputError                 a file or dataset that cannot be used
    │   ├── NotDicomError
    │   ├── UnsupportedDicomError  (SOP class, transfer syntax, pixel layout)
    │   ├── MissingAttributeError
    │   ├── DamagedPixelDataError  (truncated, wrong frame size, undecodable)
    │   ├── MultipleStudiesError
    │   └── StudyNotFoundError
    ├── ConfigError
    └── DeadlineMissed
"""
from __future__ import annotations

from pathlib import Path


class SifluoroError(Exception):
    """Base class of every error sifluoro raises on purpose."""


class InputError(SifluoroError):
    """An input file or dataset cannot be used.

    Parameters
    ----------
    message : str
        What is wrong and what to do about it.
    path : str or Path, optional
        The file at fault.
    tag : str, optional
        The DICOM tag and keyword, e.g. ``"(0018,1063) FrameTime"``.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, tag: str | None = None):
        self.path = str(path) if path is not None else None
        self.tag = tag
        self.reason = message
        where = []
        if self.path:
            where.append(self.path)
        if tag:
            where.append(tag)
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


#: the characters a UID is made of
UID_CHARACTERS = frozenset("0123456789.")


def shown_uid(value) -> str:
    """A UID as an error message may show it. A damaged length makes a UID's value swallow
    the elements after it (the patient's name and ID among them): a value that is no UID is
    shown by its first 64 UID characters (digits and dots) and its length, never as read."""
    text = str(value)
    if len(text) <= 64 and text and set(text) <= UID_CHARACTERS:
        return text
    kept = "".join(c for c in text[:64] if c in UID_CHARACTERS)
    return f"{kept}... (not a valid UID: {len(text)} characters)"


class NotDicomError(InputError):
    """The file is not DICOM, or its header cannot be parsed. A dataset without the Part 10
    preamble and file meta is read when it starts with a (0008,xxxx) element (its transfer
    syntax as pydicom finds it, said in a warning)."""


class UnsupportedDicomError(InputError):
    """DICOM that sifluoro cannot use: SOP class, transfer syntax or pixel layout."""


class MissingAttributeError(InputError):
    """A mandatory attribute is missing or empty."""


class DamagedFileError(InputError):
    """An element, item or sequence runs past the end of the file: a copy cut short, or a
    length damaged (the two look the same from the file alone). Raised for dose reports, which
    pydicom would read as far as they go, short of events."""


class DamagedPixelDataError(InputError):
    """Pixel data is truncated, of the wrong size, or fails to decode."""


class UnsupportedPixelDataError(DamagedPixelDataError, UnsupportedDicomError):
    """An X-ray image's pixel data in a form sifluoro does not read (signed, colour, a video
    transfer syntax, ...): the file is whole, its frames are not shown, their dose counts."""


class UntimedRunError(DamagedPixelDataError, MissingAttributeError):
    """A run without any acquisition or content time among others: its frames cannot be
    placed in the study, so none is shown; they were exposed, so their dose counts (as lost
    frames, at the study's end)."""


class OverlappingRunError(DamagedPixelDataError):
    """A run that starts before an earlier run's last frame: one plane cannot expose two runs
    at once (a second plane or a wrong clock; a derived copy is a :class:`DerivedCopyError`), and its frames would run
    backwards in time, so none is shown; its dose counts (as lost frames)."""


class DuplicateInstanceError(InputError):
    """Another file holds the same SOP instance and is used instead (the newer copy): this
    one is not counted twice."""


class CopiedRunError(InputError):
    """A copy of a run of the study: an image derived from it (ImageType DERIVED, naming it as
    its source or taken over its time), or the same exposure exported again under other UIDs
    (same start, frames and technique). Neither its frames nor its dose count twice; the run
    it copies is used."""


class NotAnExposureError(InputError):
    """An image of the study that records no exposure (a saved screen or key image beside its
    X-ray runs): neither shown nor counted as an irradiation event."""


class MultipleStudiesError(InputError):
    """The input holds more than one study; the caller must choose one."""

    def __init__(self, study_uids: list[str]):
        self.study_uids = list(study_uids)
        listed = ", ".join(self.study_uids)
        super().__init__(
            f"the input holds {len(self.study_uids)} studies ({listed}); "
            "pass --study UID (study_uid= in Python) to choose one, or give the files of one "
            "study",
            tag="(0020,000D) StudyInstanceUID",
        )


class StudyNotFoundError(InputError):
    """The study asked for (``--study``) is not among the inputs' studies."""

    def __init__(self, study_uid: str, found: list[str], *, ambiguous: bool = False):
        self.study_uid, self.found = study_uid, list(found)
        listed = ", ".join(self.found) if self.found else "none"
        super().__init__(f"study {study_uid} ends {len(self.found)} studies' UIDs ({listed}); "
                         "give more of it in --study" if ambiguous else
                         f"study {study_uid} is not in the input (its studies: {listed}); "
                         "check --study (a UID, or a unique end of one, 8 characters or more)",
                         tag="(0020,000D) StudyInstanceUID")


class ConfigError(SifluoroError):
    """A setting is out of range or inconsistent; the message names the setting."""


class DeadlineMissed(SifluoroError):
    """A frame's image work did not fit its latency budget."""

    def __init__(self, index: int, latency_ms: float, budget_ms: float):
        self.index, self.latency_ms, self.budget_ms = index, latency_ms, budget_ms
        super().__init__(
            f"frame {index}: {latency_ms:.2f} ms exceeds the budget of {budget_ms:.2f} ms"
        )
