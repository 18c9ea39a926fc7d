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
0xC002   the instance parses but lacks what the pipeline needs (reader's typed error), or an
         SR is not a dose report
======== ==================================================================================

Associations are rejected when the calling AE title is not in ``--allow-ae`` (when given),
when the called AE title is not ``--ae-title``, or beyond ``--max-associations``. SIGTERM (or
SIGINT) drains: the listening socket closes, open associations finish (up to
``--drain-timeout-s``), pipelines finish, summaries are written, and the process exits 0.
Instances are held in memory while received (pynetdicom), so the peak is about
``--max-associations`` x ``--max-instance-mb``.
"""
from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
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
from sifluoro.acquire.live import LiveStudies
from sifluoro.acquire.video_pixels import video_decoder_available
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
COMPRESSED = (RLELossless, JPEGLosslessSV1, JPEGLossless, JPEG2000Lossless, JPEG2000,
              JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless)
MIB = 1 << 20

# Identifiers of C-FIND etc. could carry patient data; this SCP takes none, but be sure.
_config.LOG_REQUEST_IDENTIFIERS = False


def decodable_transfer_syntaxes() -> list[UID]:
    """Uncompressed syntaxes plus every compressed one with an installed decoder, and the
    video syntaxes (MPEG-2, H.264, HEVC) when OpenCV can decode them: a C-arm that sends its
    loops only as video is not refused at association (its dose would be lost there)."""
    video = list(MPEGTransferSyntaxes) if video_decoder_available() else []
    return list(UNCOMPRESSED) + [uid for uid in COMPRESSED if decoder_available(uid)] + video


@dataclass(frozen=True)
class ReceiverSettings:
    """How the receiver listens and what it takes.

    Attributes
    ----------
    port : int
        TCP port (0: any free port; see :attr:`Receiver.port`).
    ae_title : str
        This SCP's AE title; associations calling another title are rejected.
    spool : Path
        Folder of received instances (see :mod:`sifluoro.acquire.spool`).
    allow_ae : tuple of str
        Calling AE titles accepted; empty accepts any.
    events, summary : Path, optional
        Output paths (default: per study in the spool).
    host : str
        Address to listen on.
    tls_cert, tls_key, tls_ca : Path, optional
        Server certificate and key (PEM) enable TLS; a CA makes client certificates required.
    max_associations : int
    max_pdu_bytes : int
        Largest PDU this SCP receives (0: no limit).
    max_instance_mb : float
    spool_quota_mb : float, optional
    drain_timeout_s : float
        On SIGTERM, how long open associations may take to finish before they are aborted.
    """

    port: int
    ae_title: str
    spool: Path
    allow_ae: tuple[str, ...] = ()
    events: Path | None = None
    summary: Path | None = None
    host: str = "0.0.0.0"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    max_associations: int = 10
    max_pdu_bytes: int = 262144
    max_instance_mb: float = 1024.0
    spool_quota_mb: float | None = None
    drain_timeout_s: float = 30.0

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0-65535, got {self.port}")
        if not 1 <= len(self.ae_title.strip()) <= 16:
            raise ConfigError(f"--ae-title must be 1-16 characters, got {self.ae_title!r}")
        if self.max_associations < 1:
            raise ConfigError(f"--max-associations must be >= 1, got {self.max_associations}")
        if self.max_pdu_bytes != 0 and self.max_pdu_bytes < 4096:
            raise ConfigError(f"--max-pdu must be 0 (no limit) or >= 4096, got {self.max_pdu_bytes}")
        if not self.max_instance_mb > 0:
            raise ConfigError(f"--max-instance-mb must be > 0, got {self.max_instance_mb}")
        if self.spool_quota_mb is not None and not self.spool_quota_mb > 0:
            raise ConfigError(f"--spool-quota-mb must be > 0, got {self.spool_quota_mb}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-ca needs --tls-cert and --tls-key")


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
            ae.add_supported_context(sop_class, list(UNCOMPRESSED))  # Enhanced/Comprehensive SR
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
        data = event.encoded_dataset(include_meta=True)
        if len(data) > self.max_instance_bytes:
            raise _Refused(OUT_OF_RESOURCES, f"instance of {len(data) / MIB:.1f} MiB exceeds "
                           f"--max-instance-mb {self.settings.max_instance_mb:g}")
        header = _parse_header(data)
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
            tmp = self.spool.write_temp(study_uid, sop_uid, data)
            try:
                _check_usable(tmp, request_class)
            except BaseException:
                self.spool.discard(tmp)
                raise
            return tmp

        try:
            self.spool.reserve(len(data))
        except SpoolFullError as exc:
            raise _Refused(OUT_OF_RESOURCES, str(exc)) from exc
        stored = False
        try:
            stored = self.live.store(study_uid, sop_uid, write)
        except SpoolFullError as exc:
            raise _Refused(OUT_OF_RESOURCES, str(exc)) from exc
        except InputError as exc:
            raise _Refused(UNUSABLE, f"{exc.tag}: {exc.reason}" if exc.tag else exc.reason) from exc
        finally:
            self.spool.settle(len(data), stored=stored)
        return stored


def _parse_header(data: bytes) -> Dataset:
    try:
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
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


# Command line ----------------------------------------------------------------------------------
def add_receive_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``sifluoro receive``."""
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--ae-title", required=True, help="this receiver's AE title")
    parser.add_argument("--spool", type=Path, required=True, metavar="DIR",
                        help="folder where received instances are stored")
    parser.add_argument("--allow-ae", action="append", default=[], metavar="AE",
                        help="accept associations only from this calling AE title (repeatable)")
    parser.add_argument("--events", type=Path, metavar="EVENTS.jsonl",
                        help="one events file for all studies (default: DIR/<study>/events.jsonl)")
    parser.add_argument("--summary", type=Path, metavar="SUMMARY.json",
                        help="also write the summary of the study updated last here (one "
                             "study at a time); each study's own is DIR/<study>/summary.json")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default %(default)s)")
    parser.add_argument("--tls-cert", type=Path, metavar="CERT.pem", help="server certificate: enables TLS")
    parser.add_argument("--tls-key", type=Path, metavar="KEY.pem", help="server private key")
    parser.add_argument("--tls-ca", type=Path, metavar="CA.pem",
                        help="require client certificates signed by this CA")
    d = ReceiverSettings(0, "X", Path("."))
    parser.add_argument("--max-associations", type=int, default=d.max_associations,
                        help="simultaneous associations (default %(default)s)")
    parser.add_argument("--max-pdu", type=int, default=d.max_pdu_bytes, metavar="BYTES",
                        help="largest PDU received, 0 for no limit (default %(default)s)")
    parser.add_argument("--max-instance-mb", type=float, default=d.max_instance_mb,
                        help="largest instance accepted, in MiB (default %(default)s)")
    parser.add_argument("--spool-quota-mb", type=float, metavar="MB",
                        help="most MiB of instances the spool may hold (default: no quota)")
    parser.add_argument("--drain-timeout-s", type=float, default=d.drain_timeout_s,
                        help="on SIGTERM, how long open associations may finish (default %(default)s)")
    parser.add_argument("--budget-ms", type=float, default=Settings().latency_budget_ms,
                        help="per-frame latency budget for image work (default %(default)s ms)")


def add_receive_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``receive`` to the ``sifluoro`` command's subparsers."""
    p = subparsers.add_parser("receive", help="DICOM C-STORE receiver feeding the live pipeline")
    add_receive_arguments(p)
    p.set_defaults(func=run_receive)
    return p


def settings_from_args(args: argparse.Namespace) -> ReceiverSettings:
    return ReceiverSettings(
        port=args.port, ae_title=args.ae_title, spool=args.spool, allow_ae=tuple(args.allow_ae),
        events=args.events, summary=args.summary, host=args.host, tls_cert=args.tls_cert,
        tls_key=args.tls_key, tls_ca=args.tls_ca, max_associations=args.max_associations,
        max_pdu_bytes=args.max_pdu, max_instance_mb=args.max_instance_mb,
        spool_quota_mb=args.spool_quota_mb, drain_timeout_s=args.drain_timeout_s)


def run_receive(args: argparse.Namespace) -> int:
    """Run the receiver until SIGTERM/SIGINT, then drain; 0 on a clean stop, 1 when some
    outputs (events, summaries, state) could not be written."""
    from sifluoro.outfiles import check_writable

    # found at the first study, a service would run for days writing nothing a reader can use
    check_writable(events=args.events, summary=args.summary)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        receiver = Receiver(settings_from_args(args),
                            pipeline_settings=Settings(latency_budget_ms=args.budget_ms))
        receiver.start()
    except OSError as exc:  # port taken, spool not writable
        print(f"sifluoro: cannot start the receiver: {exc}", file=sys.stderr)
        return 2
    print(f"sifluoro receive: listening on {receiver.settings.host}:{receiver.port} as "
          f"{receiver.settings.ae_title}", flush=True)
    while not stop.wait(0.5):
        pass
    log.info("signal received: draining")
    receiver.stop()
    print(f"sifluoro receive: stopped ({receiver.counts['stored']} stored, "
          f"{receiver.counts['duplicates']} duplicates, {receiver.counts['refused']} refused)",
          flush=True)
    if receiver.live.output_errors:
        print(f"sifluoro receive: {receiver.live.output_errors} event, summary or state "
              f"writes failed (a full disk?); see the log", file=sys.stderr, flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sifluoro receive", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    add_receive_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_receive(args)
    except ConfigError as exc:
        print(f"sifluoro: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
