"""Pixel readers of a ``Run``: its frames decoded one at a time, as read-only 2-D uint16 arrays.

One per way the pixel data is stored: native (read at file offsets), deflated (inflated by
pydicom), encapsulated (pydicom's decoders), encapsulated in a file cut short (the frames whose
fragments are all there), and none (a file that ends before its pixel data). Each raises
``DamagedPixelDataError`` at the first frame it cannot give, so the run's remaining frames are
counted as lost and the study goes on.
"""
from __future__ import annotations

import struct
from functools import lru_cache
from typing import Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import iter_pixels
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, RLETransferSyntaxes

from sifluoro.errors import DamagedPixelDataError
from sifluoro.model import Run


def read_native(run: Run) -> Iterator[np.ndarray]:
    """Uncompressed frames read straight into their own arrays (one allocation per frame).

    A file that cannot be read any more (deleted or moved since the scan, an I/O error) is
    damaged pixel data for this run only: the study goes on."""
    dtype = np.dtype("u1") if run.bits_allocated == 8 else np.dtype("<u2")
    nbytes = run.rows * run.columns * dtype.itemsize
    try:
        fh = open(run.path, "rb", buffering=0)
    except OSError as exc:
        raise _unreadable(run, 0, exc) from exc
    with fh:
        for k in range(run.n_frames):
            stored = np.empty((run.rows, run.columns), dtype)
            try:
                fh.seek(run.pixel_offset + k * nbytes)
                got = fh.readinto(memoryview(stored).cast("B"))
            except OSError as exc:
                raise _unreadable(run, k, exc) from exc
            if got != nbytes:
                raise DamagedPixelDataError(f"pixel data is truncated: the file ends in frame "
                                            f"{k + 1} of {run.n_frames}; re-export the run",
                                            path=run.path, tag="(7FE0,0010) PixelData")
            yield _as_frame(stored, run)


def _unreadable(run: Run, k: int, exc: OSError) -> DamagedPixelDataError:
    return DamagedPixelDataError(f"the file cannot be read at frame {k + 1} of {run.n_frames} "
                                 f"({type(exc).__name__}: {exc.strerror or exc}); was it moved "
                                 "or deleted while being read?", path=run.path,
                                 tag="(7FE0,0010) PixelData")


def _as_frame(stored: np.ndarray, run: Run) -> np.ndarray:
    """uint16 with the bits above BitsStored (overlays) cleared, read-only (``stored`` is
    the reader's own array)."""
    return _stored_bits(stored.astype(np.uint16) if stored.dtype.itemsize == 1 else stored, run)


def _stored_bits(frame: np.ndarray, run: Run) -> np.ndarray:
    """``frame`` (writable uint16) with the bits above BitsStored cleared, made read-only."""
    if run.bits_stored < 16:
        frame &= np.uint16((1 << run.bits_stored) - 1)
    frame.flags.writeable = False
    return frame


def read_deflated(run: Run) -> Iterator[np.ndarray]:
    """Deflated Explicit VR Little Endian: the offsets in the header are in the inflated
    stream, not the file, so pydicom inflates the whole dataset and frames are cut from it."""
    try:
        ds = pydicom.dcmread(run.path, force=False)
        data = ds.PixelData
    except Exception as exc:  # cut short, damaged stream, or gone since the scan
        raise DamagedPixelDataError(f"deflated dataset cannot be inflated ({type(exc).__name__}: "
                                    f"{exc}); re-export the run", path=run.path,
                                    tag="(7FE0,0010) PixelData") from exc
    dtype = np.dtype("u1") if run.bits_allocated == 8 else np.dtype("<u2")
    nbytes = run.rows * run.columns * dtype.itemsize
    for k in range(run.n_frames):
        chunk = data[k * nbytes:(k + 1) * nbytes]
        if len(chunk) != nbytes:
            raise DamagedPixelDataError(f"pixel data is truncated: it ends in frame {k + 1} of "
                                        f"{run.n_frames}; re-export the run", path=run.path,
                                        tag="(7FE0,0010) PixelData")
        yield _as_frame(np.frombuffer(chunk, dtype).reshape(run.rows, run.columns).copy(), run)


def read_none(run: Run) -> Iterator[np.ndarray]:
    """A file cut short before its pixel data: no frame to show, all counted as lost."""
    raise DamagedPixelDataError(f"the file ends before its pixel data (an interrupted "
                                f"transfer?): none of its {run.n_frames} frame(s) can be shown, "
                                "their dose is counted from the header; send or export it again",
                                path=run.path, tag="(7FE0,0010) PixelData")
    yield  # a generator, like the other readers


def read_refused(run: Run, *, tag: str, why: str,
                 error: type = DamagedPixelDataError) -> Iterator[np.ndarray]:
    """Frames whose stored values the header says cannot be read (``tag``, ``why``; ``error``
    a DamagedPixelDataError class): none shown, all counted as lost (dose from the header)."""
    raise error(f"{why}; none of its {run.n_frames} frame(s) can be shown, their dose is "
                "counted from the header", path=run.path, tag=tag)
    yield  # a generator, like the other readers


def _decoded(run: Run, k: int, frame: np.ndarray) -> np.ndarray:
    """Frame ``k`` (0-based) as decoded, checked against the run's size, read-only uint16
    with the bits above BitsStored cleared: a codestream may carry them (a JPEG-LS coded at
    16 bits from a file with overlay bits, transcoded by a PACS) and decoders keep them."""
    if frame.shape != (run.rows, run.columns):
        raise DamagedPixelDataError(f"frame {k + 1} decodes to {frame.shape}, expected "
                                    f"({run.rows}, {run.columns})", path=run.path,
                                    tag="(7FE0,0010) PixelData")
    return _stored_bits(frame.astype(np.uint16, copy=frame.dtype != np.uint16
                                     or not frame.flags.writeable), run)


#: pydicom's decoding plugins, in the order sifluoro prefers them; GDCM (installed to write
#: JPEG Lossless) is not among them: on damaged JPEG data it aborts the whole interpreter
#: (a C++ exception), where the others raise an error that leaves the rest of the study
DECODING_PLUGINS = ("pylibjpeg", "pyjpegls", "pillow", "pydicom")


@lru_cache(maxsize=None)
def decoding_plugin(transfer_syntax_uid: str) -> str:
    """The plugin that decodes this syntax: the first of :data:`DECODING_PLUGINS` installed,
    else pydicom's own choice ("")."""
    available = get_decoder(UID(transfer_syntax_uid)).available_plugins
    return next((name for name in DECODING_PLUGINS if name in available), "")


def read_encapsulated(run: Run) -> Iterator[np.ndarray]:
    # the run's count, not the file's: a header that leaves NumberOfFrames out (header.parse)
    frames = iter_pixels(run.path, raw=True, number_of_frames=run.n_frames,
                         decoding_plugin=decoding_plugin(run.transfer_syntax_uid))
    for k in range(run.n_frames):
        try:
            frame = next(frames)
        except StopIteration:
            raise DamagedPixelDataError(f"only {k} of {run.n_frames} frames are encoded",
                                        path=run.path, tag="(7FE0,0010) PixelData") from None
        except BaseException as exc:  # any decoder failure on damaged data
            raise _undecodable(run, k, exc) from exc
        yield _decoded(run, k, frame)


def _undecodable(run: Run, k: int, exc: BaseException) -> DamagedPixelDataError:
    """Frame ``k``'s decoder failure as damaged pixel data. A decoder written in Rust
    (pylibjpeg-rle) panics on some damaged fragments: PanicException is a BaseException, which
    ``except Exception`` let through, and the study stopped; anything else not an Exception
    (KeyboardInterrupt, SystemExit) is raised again."""
    if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
        raise exc
    return DamagedPixelDataError(f"frame {k + 1} fails to decode ({type(exc).__name__}: {exc})",
                                 path=run.path, tag="(7FE0,0010) PixelData")


def read_encapsulated_cut(run: Run) -> Iterator[np.ndarray]:
    """Encapsulated pixel data of a file cut short (``pixel_offset`` is its (7FE0,0010) tag):
    the frames whose fragments are all in the file are decoded, then the run is damaged."""
    try:
        with open(run.path, "rb") as fh:
            fh.seek(run.pixel_offset)
            data = fh.read()
    except OSError as exc:
        raise _unreadable(run, 0, exc) from exc
    encoded = complete_frames(data, run)
    decoder = get_decoder(UID(run.transfer_syntax_uid))
    for k, frame_bytes in enumerate(encoded):
        try:
            frame, _ = decoder.as_array(_one_frame_dataset(run, frame_bytes), raw=True,
                                        decoding_plugin=decoding_plugin(run.transfer_syntax_uid))
        except BaseException as exc:  # any decoder failure on damaged data
            raise _undecodable(run, k, exc) from exc
        yield _decoded(run, k, frame)
    if len(encoded) < run.n_frames:
        raise DamagedPixelDataError(f"pixel data is truncated: the file ends in frame "
                                    f"{len(encoded) + 1} of {run.n_frames} (an interrupted "
                                    "transfer?); re-export the run", path=run.path,
                                    tag="(7FE0,0010) PixelData")


#: how far from a fragment's end pydicom looks for the EOI / EOC marker that ends a frame
#: (trailing padding may follow it)
FRAME_END_TAIL_BYTES = 10


def ends_a_frame(tail: bytes) -> bool:
    """Whether a JPEG, JPEG-LS or JPEG 2000 fragment whose last bytes are ``tail`` (at least
    :data:`FRAME_END_TAIL_BYTES` of them, or all it has) ends a frame: it holds the EOI / EOC
    marker (FF D9) there, as pydicom splits frames."""
    return b"\xff\xd9" in tail[-FRAME_END_TAIL_BYTES:]


def complete_frames(data: bytes, run: Run) -> list[bytes]:
    """The encoded frames wholly present in ``data`` (encapsulated pixel data from its tag on,
    possibly cut anywhere), in order.

    Frame boundaries: the Basic Offset Table when it has an offset per frame; else one fragment
    per frame when the fragments are all there and as many as the frames, or for RLE (one
    fragment per frame by the standard); else a frame ends with the fragment that holds the
    JPEG/JPEG-LS EOI or JPEG 2000 EOC marker (FF D9) in its last bytes, as pydicom does.
    """
    pos = 12  # tag, VR 'OB', 2 reserved bytes, undefined length: encapsulation is explicit VR
    bot: bytes | None = None
    first = 0
    fragments: list[tuple[int, bytes]] = []  # (item offset from the first fragment, value)
    ended = False
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHL", data, pos)
        if (group, element) == (0xFFFE, 0xE0DD):
            ended = True
            break
        if (group, element) != (0xFFFE, 0xE000) or pos + 8 + length > len(data):
            break
        value = data[pos + 8:pos + 8 + length]
        if bot is None:
            bot, first = value, pos + 8 + length
        else:
            fragments.append((pos - first, value))
        pos += 8 + length
    n = run.n_frames
    if bot is None:
        return []
    whole_to = pos - first  # offset, from the first fragment, up to which fragments are whole
    if len(bot) == 4 * n:
        starts = list(struct.unpack(f"<{n}L", bot))
        ends = starts[1:] + [whole_to if ended else None]
        frames = []
        for start, end in zip(starts, ends):
            if end is None or end > whole_to or end <= start:
                break
            frames.append(b"".join(v for at, v in fragments if start <= at < end))
        return frames
    values = [v for _, v in fragments]
    if (ended and len(values) == n) or UID(run.transfer_syntax_uid) in RLETransferSyntaxes:
        return values[:n]
    frames, parts = [], []
    for value in values:
        parts.append(value)
        if ends_a_frame(value):
            frames.append(b"".join(parts))
            parts = []
    return frames[:n]


def _one_frame_dataset(run: Run, encoded: bytes) -> Dataset:
    """A dataset holding one encoded frame, for pydicom's decoder."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(run.transfer_syntax_uid)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = run.rows, run.columns, 1
    ds.BitsAllocated, ds.BitsStored = run.bits_allocated, run.bits_stored
    ds.HighBit, ds.PixelRepresentation = run.bits_stored - 1, 0
    ds.PhotometricInterpretation, ds.NumberOfFrames = run.photometric, 1
    ds.PixelData = encapsulate([encoded])
    ds["PixelData"].VR = "OB"
    return ds
