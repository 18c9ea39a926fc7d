"""How the DICOM receiver listens and what it takes: checked when built, so the command line
reports a bad option before anything is imported or bound."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sifluoro.errors import ConfigError


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
