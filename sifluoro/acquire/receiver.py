"""DICOM C-STORE receiver: the C-arm (or its router) pushes each run as it is acquired.

``sifluoro receive --port P --ae-title T --spool DIR ...`` runs a pynetdicom Storage SCP (plus
Verification) for the X-ray image classes and for dose reports, sent as X-Ray Radiation Dose SR
or, by older devices, as Enhanced, Comprehensive or Comprehensive 3D SR. Following
pynetdicom's pattern, the network layer only binds handlers that return DICOM statuses; what
happens to an instance is decided here and in :mod:`sifluoro.acquire.spool` /
:mod:`sifluoro.acquire.live`:

1. the UIDs in the command and dataset are validated (they become file names);
2. the encoded dataset, exactly as sent, is written under a temporary name, fsynced, its header
   checked with the reader's rules, then renamed into ``DIR/<study>/<sop>.dcm``;
3. only then is success answered, and the instance is queued for its study's pipeline.

Statuses answered (C-STORE, PS3.4 Annex B; ``ErrorComment`` says why):

======== ==================================================================================
0x0000   stored (or already stored: a duplicate is counted, not stored twice)
0xA700   out of resources: spool quota reached, disk full, instance over --max-instance-mb
0xA900   the dataset's SOP Class UID differs from the one in the C-STORE request
0xC000   the dataset cannot be parsed, or its SOP Instance UID differs from the request's
0xC001   a UID is not a valid UID (e.g. ``../../etc``): never used as a path
0xC002   the instance parses but the reader refuses it (its typed error), or an
         SR is not a dose report
======== ==================================================================================

Associations are rejected when the calling AE title is not in ``--allow-ae`` (when given),
when the called AE title is not ``--ae-title``, or beyond ``--max-associations``. SIGTERM (or
SIGINT) drains: the listening socket closes, open associations finish (up to
``--drain-timeout-s``), pipelines finish, summaries are written, and the process exits 0.
Instances are received into temporary files (pynetdicom's chunked receiving, in ``$TMPDIR``)
and copied into the spool, so none is held whole in memory.
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MPEGTransferSyntaxes,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

from sifluoro.acquire.dicom_reader import (
    IMAGE_SOP_CLASSES,
    XRAY_SOP_CLASSES,
    decoder_available,
    run_from_dataset,
)
from sifluoro.acquire.live import LiveStudies, ReceiverStoppingError
from sifluoro.acquire.video_pixels import video_decoder_available
from sifluoro.acquire.receiver_settings import ReceiverSettings
from sifluoro.acquire.spool import InvalidUIDError, Spool, SpoolFullError, check_uid
from sifluoro.config import Settings
from sifluoro.dose.rdsr_read import SR_SOP_CLASSES, is_dose_report
from sifluoro.errors import ConfigError, InputError, UnsupportedDicomError

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
INVALID_UID = 0xC001
UNUSABLE = 0xC002

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# read as the file it arrives as (pydicom inflates it): a device proposing only deflate could
# not deliver its images or dose report (review s22 F10)
DEFLATED = (DeflatedExplicitVRLittleEndian,)
COMPRESSED = (RLELossless, JPEGLosslessSV1, JPEGLossless, JPEG2000Lossless, JPEG2000,
              JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless)
MIB = 1 << 20

# Identifiers of C-FIND etc. could carry patient data; this SCP takes none, but be sure.
_config.LOG_REQUEST_IDENTIFIERS = False
# A dataset arrives in a temporary file (in $TMPDIR, deleted after its handler) rather than in
# memory: a cine run of hundreds of 1024² frames on each of --max-associations would
# otherwise be held whole, twice, before --max-instance-mb could refuse it.
_config.STORE_RECV_CHUNKED_DATASET = True


class _OneLineConnectionErrors(logging.Filter):
    """pynetdicom logs a connection lost while a PDU is read (a plain client at a TLS port, a
    client without the certificate --tls-ca asks for, a peer reset) as an ERROR line and then
    the error's whole traceback: one line says it, a TLS failure as a warning with what it
    usually means."""

    LEAD = "Connection closed before the entire PDU was received"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() == self.LEAD:
            return False  # the next record says why
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ssl.SSLError):  # at the handshake, mostly: a client's setting
            record.msg, record.args = ("TLS failed on a connection: %s; a client without TLS, "
                                       "or without the client certificate --tls-ca requires?",
                                       (exc,))
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        elif isinstance(exc, OSError):  # a peer gone mid-association stays an error
            record.msg, record.args = "a connection was lost while a PDU was read: %s", (exc,)
            record.levelno, record.levelname = logging.ERROR, "ERROR"
        else:
            return True
        record.exc_info = record.exc_text = None
        return True


logging.getLogger("pynetdicom.dul").addFilter(_OneLineConnectionErrors())


def decodable_transfer_syntaxes() -> list[UID]:
    """Uncompressed syntaxes plus every compressed one with an installed decoder, and the
    video syntaxes (MPEG-2, H.264, HEVC) when OpenCV can decode them: a C-arm that sends its
    loops only as video is not refused at association (its dose would be lost there)."""
    video = list(MPEGTransferSyntaxes) if video_decoder_available() else []
    return (list(UNCOMPRESSED) + list(DEFLATED)
            + [uid for uid in COMPRESSED if decoder_available(uid)] + video)


class _DeferredHandshakeContext(ssl.SSLContext):
    """Server context whose handshake runs in the association's thread, not the accept loop.

    pynetdicom wraps accepted sockets in its single accept thread; with the default eager
    handshake one silent client would stall every new association.
    """

    def wrap_socket(self, sock, *args, **kwargs):
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_ssl_context(cert: Path, key: Path, ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context; with ``ca``, clients must present a certificate it signed."""
    ctx = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
        if ca is not None:
            ctx.load_verify_locations(cafile=str(ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS certificate, key or CA cannot be loaded: {exc}") from exc
    return ctx


class _Refused(Exception):
    """An instance is refused with this status; the comment goes to the sender (64 characters
    at most), the comment and detail to the log."""

    def __init__(self, status: int, comment: str, detail: str = ""):
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.detail = detail


class Receiver:
    """The Storage SCP and its live pipelines.

    Parameters
    ----------
    settings : ReceiverSettings
    pipeline_settings : Settings, optional
    stages : list, optional
        Image stages for the pipelines (default: replay's).
    workers : int, optional
        Studies processed at the same time.
    """

    def __init__(self, settings: ReceiverSettings, *, pipeline_settings: Settings | None = None,
                 stages=None, workers: int | None = None):
        self.settings = settings
        quota = None if settings.spool_quota_mb is None else int(settings.spool_quota_mb * MIB)
        # the spool is taken before anything reads or cleans it (events logs included)
        self.spool = Spool(settings.spool, quota_bytes=quota, lock=True)
        self.live = LiveStudies(self.spool, settings=pipeline_settings, stages=stages,
                                events_path=settings.events, summary_path=settings.summary,
                                workers=workers)
        self.max_instance_bytes = int(settings.max_instance_mb * MIB)
        self.counts = {"stored": 0, "duplicates": 0, "refused": 0}
        self._counts_lock = threading.Lock()
        self._server = None
        self._ae: AE | None = None

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        return self._server.server_address[1] if self._server is not None else self.settings.port

    def start(self) -> None:
        """Start listening (non-blocking), then resume the spool's unfinished studies: a
        receiver that cannot listen (port taken, bad TLS files) touches nothing, and one
        whose spool another receiver holds is refused on construction
        (:class:`~sifluoro.acquire.spool.SpoolInUseError`)."""
        try:
            self._listen()
        except BaseException:
            self.spool.unlock()
            raise
        resumed = self.live.resume()
        if resumed:
            log.info("resumed %d unfinished studies", len(resumed))

    def _listen(self) -> None:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_bytes
        ae.require_called_aet = True
        ae.require_calling_aet = list(s.allow_ae)
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in IMAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        for sop_class in sorted(SR_SOP_CLASSES):  # older devices send dose reports as
            # Enhanced/Comprehensive SR
            ae.add_supported_context(sop_class, list(UNCOMPRESSED) + list(DEFLATED))
        ae.add_supported_context(Verification)
        ctx = server_ssl_context(s.tls_cert, s.tls_key, s.tls_ca) if s.tls_cert else None
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, _on_echo),
                    (evt.EVT_CONN_OPEN, _on_conn_open), (evt.EVT_REJECTED, _on_rejected),
                    (evt.EVT_ABORTED, _on_aborted)]
        self._ae = ae
        self._server = ae.start_server((s.host, s.port), block=False, evt_handlers=handlers,
                                       ssl_context=ctx)
        log.info("listening on %s:%d as %s (%s)", s.host, self.port, s.ae_title,
                 "TLS" if ctx else "no TLS")

    def stop(self) -> None:
        """Drain: stop listening, let associations finish, finish pipelines, write summaries."""
        if self._server is not None:
            # close the listening socket without joining the association threads: they get
            # the drain timeout below
            self._server.block_on_close = False
            self._server.shutdown()
            self._server = None
        deadline = time.monotonic() + self.settings.drain_timeout_s
        # only established associations can still deliver instances; the others (a peer that
        # connected and said nothing valid) would hold the drain until pynetdicom's timeouts
        while (any(a.is_established for a in self._active_associations())
               and time.monotonic() < deadline):
            time.sleep(0.05)
        for assoc in self._active_associations():
            if assoc.is_established:
                log.warning("aborting an association still open after %.0f s",
                            self.settings.drain_timeout_s)
            assoc.abort()
        self.live.close()
        self.spool.unlock()
        log.info("stopped: %s", self.counts)

    def _active_associations(self) -> list:
        return self._ae.active_associations if self._ae is not None else []

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self.counts[key] += 1

    # The C-STORE handler ---------------------------------------------------------------------
    def _on_store(self, event) -> Dataset | int:
        """Store one instance; answer a status. Never raises."""
        request_sop = str(event.request.AffectedSOPInstanceUID or "")
        try:
            stored = self._store(event)
        except _Refused as refusal:
            self._count("refused")
            log.warning("refused %s from %s: 0x%04X %s%s", _shown(request_sop), _peer(event),
                        refusal.status, refusal.comment,
                        f" ({refusal.detail})" if refusal.detail else "")
            return _status(refusal.status, refusal.comment)
        except Exception as exc:  # whatever happens, the server answers and stays up
            self._count("refused")
            log.exception("refused %s: unexpected failure", _shown(request_sop))
            return _status(OUT_OF_RESOURCES if isinstance(exc, OSError) else CANNOT_UNDERSTAND,
                           f"receiver failure: {type(exc).__name__}")
        self._count("stored" if stored else "duplicates")
        return SUCCESS

    def _store(self, event) -> bool:
        try:
            sop_uid = check_uid(event.request.AffectedSOPInstanceUID,
                                tag="(0000,1000) AffectedSOPInstanceUID")
        except InvalidUIDError as exc:
            raise _Refused(INVALID_UID, f"invalid UID in {exc.tag}", exc.reason) from exc
        received = Path(event.dataset_path)  # the encoded dataset as sent, with a file meta
        size = received.stat().st_size
        if size > self.max_instance_bytes:
            raise _Refused(OUT_OF_RESOURCES, f"instance of {size / MIB:.1f} MiB exceeds "
                           f"--max-instance-mb {self.settings.max_instance_mb:g}")
        header = _parse_header(received)
        request_class = UID(str(event.request.AffectedSOPClassUID or ""))
        if not header.get("SOPClassUID"):
            raise _Refused(CANNOT_UNDERSTAND, "no (0008,0016) SOPClassUID in the dataset")
        if UID(str(header.SOPClassUID)) != request_class:
            raise _Refused(SOP_CLASS_MISMATCH, "(0008,0016) SOPClassUID differs from the "
                           "C-STORE request's Affected SOP Class UID")
        try:
            dataset_sop = check_uid(header.get("SOPInstanceUID"), tag="(0008,0018) SOPInstanceUID")
            study_uid = check_uid(header.get("StudyInstanceUID"),
                                  tag="(0020,000D) StudyInstanceUID")
        except InvalidUIDError as exc:
            raise _Refused(INVALID_UID, f"invalid UID in {exc.tag}", exc.reason) from exc
        if dataset_sop != sop_uid:
            raise _Refused(CANNOT_UNDERSTAND, "(0008,0018) SOPInstanceUID differs from the "
                           "C-STORE request's Affected SOP Instance UID")

        def write() -> Path:
            tmp = self.spool.write_temp(study_uid, sop_uid, received)
            try:
                _check_usable(tmp, request_class)
            except BaseException:
                self.spool.discard(tmp)
                raise
            return tmp

        try:
            self.spool.reserve(size)
        except SpoolFullError as exc:
            raise _Refused(OUT_OF_RESOURCES, str(exc)) from exc
        stored = False
        try:
            stored = self.live.store(study_uid, sop_uid, write)
        except (SpoolFullError, ReceiverStoppingError) as exc:
            raise _Refused(OUT_OF_RESOURCES, str(exc)) from exc
        except InputError as exc:
            raise _Refused(UNUSABLE, f"{exc.tag}: {exc.reason}" if exc.tag else exc.reason) from exc
        finally:
            self.spool.settle(size, stored=stored)
        return stored


def _parse_header(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for _ in ds:  # elements are decoded lazily: surface broken ones here
            pass
        return ds
    except Exception as exc:  # any parse failure is the sender's dataset's fault
        raise _Refused(CANNOT_UNDERSTAND, f"dataset cannot be parsed ({type(exc).__name__})") from exc


def _check_usable(path: Path, sop_class: UID) -> None:
    """Apply the reader's rules to a stored instance; raise its typed error if unusable. An SR
    must be a dose report (root concept X-Ray Radiation Dose Report), whatever its SR class."""
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except Exception as exc:
        raise _Refused(CANNOT_UNDERSTAND, f"dataset cannot be parsed ({type(exc).__name__})") from exc
    if sop_class in SR_SOP_CLASSES:
        if not is_dose_report(ds):
            raise UnsupportedDicomError("not a dose report: an SR is taken only with the root "
                                        "concept X-Ray Radiation Dose Report (DCM,113701)",
                                        tag="(0040,A043) ConceptNameCodeSequence")
        return
    # an X-ray image without acquisition or content time is stored too, and listed as not
    # used when processed (replay rejects it the same way): a failure status would make the
    # sender stop before the rest of the study
    try:
        run_from_dataset(ds, path)
    except InputError:
        if sop_class in XRAY_SOP_CLASSES:
            raise
        # a Secondary Capture the pipeline cannot use (a colour screenshot, a key frame): no
        # exposure, but a failure status makes senders such as DCMTK's storescu stop sending
        # the rest of the study (its runs and RDSR). Stored; the study lists it as not used.
        return


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # (0000,0902) Error Comment is LO: 64 characters, default character repertoire
    status.ErrorComment = comment.encode("ascii", "replace").decode("ascii")[:64]
    return status


def _shown(uid: str) -> str:
    return uid if len(uid) <= 80 else uid[:77] + "..."


def _on_echo(event) -> int:
    return SUCCESS


def _peer(event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title or '?'}@{requestor.address}:{requestor.port}"


def _on_conn_open(event) -> None:
    log.info("connection from %s:%s", *event.address[:2])


def _on_rejected(event) -> None:
    log.warning("association from %s rejected (AE title or association limit)", _peer(event))


def _on_aborted(event) -> None:
    log.warning("association from %s aborted", _peer(event))


if __name__ == "__main__":  # ``python -m sifluoro.acquire.receiver``, as ``sifluoro receive``
    import sys

    from sifluoro.acquire.receive_cli import main

    sys.exit(main())
