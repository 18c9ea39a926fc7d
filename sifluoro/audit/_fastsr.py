"""A lean reader of small DICOM SR files into plain dict-based datasets, for bulk ingest.

:func:`sifluoro.dose.rdsr_read.read_rdsr` walks a dose report through a pydicom ``Dataset``;
pydicom's lazy element conversion costs about 6 ms per irradiation event, which caps an audit
ingest near 50 reports/s per core. This module parses the byte stream once into
:class:`LightDataset` objects (dicts with attribute access) that the same reader accepts, at
a fraction of the cost. It covers what dose reports use: Little Endian (explicit or
implicit VR), ASCII / Latin-1 / UTF-8 text, nested sequences of defined or undefined length.
Anything else raises :class:`FastPathUnsupported` and the caller falls back to pydicom;
``tests/audit/test_fastsr.py`` checks that both paths give the same ``StudyDose``.

Values: text VRs are stripped strings (several values: a list), IS is int, DS stays the
string as stored (``float()`` of it is what pydicom's DSfloat holds), binary numbers are
Python numbers; bulk VRs (OB, OW, UN...) are bytes. Private elements are skipped.
"""
from __future__ import annotations

import logging
import struct
from functools import lru_cache
from struct import Struct

from pydicom.datadict import dictionary_VR, keyword_for_tag

from sifluoro.errors import DamagedFileError

log = logging.getLogger(__name__)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI", "UC"}
SINGLE_TEXT_VRS = {"LT", "ST", "UT", "UR"}
NUMBER_VRS = {"US": Struct("<H"), "UL": Struct("<L"), "SS": Struct("<h"), "SL": Struct("<l"),
              "FL": Struct("<f"), "FD": Struct("<d"), "SV": Struct("<q"), "UV": Struct("<Q")}
_TAG = Struct("<HH")
_U16 = Struct("<H")
_U32 = Struct("<L")


class FastPathUnsupported(Exception):
    """The file uses an encoding this reader leaves to pydicom."""


class CutShort(Exception):
    """An element, item or sequence runs past the end of the file: a copy cut short or a
    damaged length. Not left to pydicom, which reads such a file as far as it goes (a report
    missing events)."""


def cut_short_error(exc: CutShort, path) -> DamagedFileError:
    """The typed error of a report that :class:`CutShort` refused, in the one wording that
    ``dose summary``, ``audit ingest`` and replay give it."""
    return DamagedFileError(f"{exc}: the file is cut short (an interrupted copy) or damaged; "
                            "copy it again", path=path)


class LightDataset(dict):
    """Keyword → value, with attribute access and the ``get`` / ``in`` of a pydicom Dataset."""

    __slots__ = ()

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


_KEYWORDS: dict[int, str] = {}
_VR_TEXT = {vr.encode(): vr for vr in (TEXT_VRS | SINGLE_TEXT_VRS | set(NUMBER_VRS) | {"SQ", "OB", "OW", "UN"})}


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag)


@lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def parse_sr_bytes(data: bytes) -> LightDataset:
    """The dataset (with ``file_meta``-level keys dropped) of a DICOM Part 10 file's bytes.

    Raises
    ------
    FastPathUnsupported
        Not Part 10, a transfer syntax or character set not covered, or a structure (private
        sequence of unknown length in implicit VR, encapsulated data) left to pydicom.
    CutShort
        The file ends inside an element, an item or a sequence.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise FastPathUnsupported("no DICM preamble")
    try:
        return _parse(data)
    except struct.error:  # a header read past the end
        raise CutShort(f"the file ends inside an element header ({len(data)} bytes)") from None


def parse_if_covered(data: bytes) -> LightDataset | None:
    """:func:`parse_sr_bytes`, or None for a file it leaves to pydicom (``CutShort`` still
    raises: pydicom would read such a file as far as it goes)."""
    try:
        return parse_sr_bytes(data)
    except (FastPathUnsupported, UnicodeDecodeError, IndexError, ValueError, KeyError):
        return None


def _parse(data: bytes) -> LightDataset:
    meta, pos = _Parser(data, explicit=True, encoding="latin-1").dataset(132, len(data), group2_only=True)
    syntax = meta.get("TransferSyntaxUID")
    if syntax == EXPLICIT_LE:
        explicit = True
    elif syntax == IMPLICIT_LE:
        explicit = False
    else:
        raise FastPathUnsupported(f"transfer syntax {syntax}")
    charset = _charset(data, pos, explicit)
    ds, _ = _Parser(data, explicit=explicit, encoding=charset).dataset(pos, len(data), top=True)
    return ds


def _charset(data: bytes, pos: int, explicit: bool) -> str:
    """The Python codec of (0008,0005) SpecificCharacterSet, read ahead of the dataset."""
    probe = _Parser(data, explicit=explicit, encoding="latin-1")
    value = probe.first_value(pos, 0x00080005)
    terms = value if isinstance(value, list) else [value or ""]
    terms = [t for t in terms if t]
    if not terms or terms == ["ISO_IR 6"]:
        return "latin-1"  # ASCII; Latin-1 decodes it the same and never fails
    if terms == ["ISO_IR 100"]:
        return "latin-1"
    if terms == ["ISO_IR 192"]:
        return "utf-8"
    raise FastPathUnsupported(f"character set {terms}")


class _Parser:
    def __init__(self, data: bytes, *, explicit: bool, encoding: str):
        self.data = data
        self.explicit = explicit
        self.encoding = encoding

    def header(self, pos: int) -> tuple[int, str, int, int]:
        """(tag, VR, length, position of the value) of the element at ``pos``."""
        group, elem = _TAG.unpack_from(self.data, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:  # item and delimiters carry no VR in any syntax
            return tag, "", _U32.unpack_from(self.data, pos + 4)[0], pos + 8
        if self.explicit or group == 0x0002:
            vr = self.data[pos + 4:pos + 6]
            if vr in LONG_VRS:
                return tag, vr.decode("ascii"), _U32.unpack_from(self.data, pos + 8)[0], pos + 12
            return tag, vr.decode("ascii", "replace"), _U16.unpack_from(self.data, pos + 6)[0], pos + 8
        return tag, _implicit_vr(tag), _U32.unpack_from(self.data, pos + 4)[0], pos + 8

    def first_value(self, pos: int, wanted: int):
        """The value of top-level element ``wanted`` if it comes before any larger tag."""
        end = len(self.data)
        while pos < end:
            tag, vr, length, pos = self.header(pos)
            if tag > wanted or length == UNDEFINED:
                return None
            if tag == wanted:
                return self.value(vr, pos, length)
            pos += length
        return None

    def dataset(self, pos: int, end: int, *, group2_only: bool = False,
                top: bool = False) -> tuple[LightDataset, int]:
        ds = LightDataset()
        data, explicit = self.data, self.explicit
        keywords, value = _KEYWORDS, self.value
        # the element header is decoded inline: this loop runs for every element of the file
        if end > len(data):
            raise CutShort(f"an item runs past the end of the file ({len(data)} bytes)")
        while pos < end:
            if top and end - pos < 8:  # shorter than any element header: padding, as pydicom
                log.info("ignoring %d byte(s) after the last element", end - pos)  # reads it
                break
            group, elem = _TAG.unpack_from(data, pos)
            if group2_only and group != 0x0002:
                break
            tag = group << 16 | elem
            if group == 0xFFFE:
                length, pos, vr = _U32.unpack_from(data, pos + 4)[0], pos + 8, ""
                if tag == ITEM_END:
                    return ds, pos
            elif explicit or group == 0x0002:
                raw_vr = data[pos + 4:pos + 6]
                if raw_vr in LONG_VRS:
                    length, pos = _U32.unpack_from(data, pos + 8)[0], pos + 12
                else:
                    length, pos = _U16.unpack_from(data, pos + 6)[0], pos + 8
                vr = _VR_TEXT.get(raw_vr) or raw_vr.decode("ascii", "replace")
            else:
                length, pos, vr = _U32.unpack_from(data, pos + 4)[0], pos + 8, _implicit_vr(tag)
            private = group & 1
            if vr == "SQ" or (length == UNDEFINED and vr == "UN" and not explicit):
                if length == UNDEFINED and vr != "SQ":
                    raise FastPathUnsupported(f"element ({group:04X},{elem:04X}) of "
                                              "unknown VR and undefined length")
                items, pos = self.sequence(pos, length)
                if not private:
                    keyword = keywords.get(tag)
                    if keyword is None:
                        keyword = keywords[tag] = _keyword(tag)
                    if keyword:
                        ds[keyword] = items
                continue
            if length == UNDEFINED:
                raise FastPathUnsupported("encapsulated or undefined-length value")
            if pos + length > len(data):
                raise CutShort(f"element ({group:04X},{elem:04X}) runs past the end of the file "
                               f"({len(data)} bytes)")
            if not private and elem:  # group lengths (gggg,0000) are not kept
                keyword = keywords.get(tag)
                if keyword is None:
                    keyword = keywords[tag] = _keyword(tag)
                if keyword:
                    ds[keyword] = value(vr, pos, length)
            pos += length
        return ds, pos

    def sequence(self, pos: int, length: int) -> tuple[list[LightDataset], int]:
        items: list[LightDataset] = []
        end = len(self.data) if length == UNDEFINED else pos + length
        if end > len(self.data):
            raise CutShort(f"a sequence runs past the end of the file ({len(self.data)} bytes)")
        while pos < end:
            tag, _, item_length, pos = self.header(pos)
            if tag == SEQUENCE_END:
                return items, pos
            if tag != ITEM:
                raise FastPathUnsupported(f"expected an item, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if item_length == UNDEFINED:
                item, pos = self.dataset(pos, len(self.data))
                if pos >= len(self.data) and not self._ended_item(pos):
                    raise CutShort(f"an item has no end in the file ({len(self.data)} bytes)")
            else:
                item, pos = self.dataset(pos, pos + item_length)
            items.append(item)
        if length == UNDEFINED:
            raise CutShort(f"a sequence has no end in the file ({len(self.data)} bytes)")
        return items, pos

    def _ended_item(self, pos: int) -> bool:
        """Whether the undefined-length item just read ended with its delimiter (at ``pos``)."""
        return pos >= 8 and _TAG.unpack_from(self.data, pos - 8) == (0xFFFE, 0xE00D)

    def value(self, vr: str, pos: int, length: int):
        raw = self.data[pos:pos + length]
        if vr in TEXT_VRS:
            text = raw.decode(self.encoding).strip("\x00 ")
            if "\\" in text:
                return [self._text(vr, t.strip()) for t in text.split("\\")]
            return self._text(vr, text)
        if vr in SINGLE_TEXT_VRS:
            return raw.decode(self.encoding).rstrip("\x00 ")
        number = NUMBER_VRS.get(vr)
        if number is not None:
            n = length // number.size
            if n == 1:
                return number.unpack_from(raw)[0]
            return [v[0] for v in number.iter_unpack(raw[:n * number.size])]
        return raw

    @staticmethod
    def _text(vr: str, text: str):
        if vr == "IS" and text:
            try:
                return int(text)
            except ValueError:
                return text
        return text
