"""Settings of the dose registry and audit, in one frozen dataclass (loaded once, passed down)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sifluoro.config import DoseSettings
from sifluoro.errors import ConfigError


@dataclass(frozen=True)
class AuditSettings:
    """How studies are ingested into the registry and how the audit report flags outliers.

    Attributes
    ----------
    patient_link_key : bytes or None
        Secret key of the patient link. When set, each study stores
        ``HMAC-SHA256(key, PatientID)`` (hex) so that a physicist can see that two studies
        belong to the same patient without the registry holding the ID; whoever holds the key
        can recompute the link for a known ID, nobody can invert it. None (default) stores no
        link at all. Patient name and ID themselves are never stored nor logged.
    outlier_factor : float
        A study is an outlier when its DAP, air kerma or fluoroscopy time exceeds the 75th
        percentile of its procedure and device group times this factor (default 1.5).
    batch_studies : int
        Studies written per database transaction. An interrupted ingest keeps every batch
        already committed and nothing of the batch in progress.
    chunk_files : int
        Files parsed per task (one task per chunk on a process pool or Dask worker).
    dose : DoseSettings
        Dose accounting of image studies and the alert / SRDL levels.
    lock_wait_s : float
        How long an ingest waits for another's batch to commit before it gives up, s (SQLite's
        busy timeout; PostgreSQL's lock waits as long as it takes). A batch that recomputes
        200 studies from their files holds the lock for seconds: the default of 5 s that
        SQLite's driver has made the second of two ingests fail (review s24 #3).
    """

    patient_link_key: bytes | None = None
    outlier_factor: float = 1.5
    batch_studies: int = 200
    chunk_files: int = 256
    dose: DoseSettings = field(default_factory=DoseSettings)
    lock_wait_s: float = 600.0

    def __post_init__(self):
        if not self.outlier_factor > 0:
            raise ConfigError(f"audit.outlier_factor must be > 0, got {self.outlier_factor}")
        if self.batch_studies < 1:
            raise ConfigError(f"audit.batch_studies must be >= 1, got {self.batch_studies}")
        if not self.lock_wait_s >= 0:
            raise ConfigError(f"audit.lock_wait_s must be >= 0, got {self.lock_wait_s}")
        if self.chunk_files < 1:
            raise ConfigError(f"audit.chunk_files must be >= 1, got {self.chunk_files}")
        if self.patient_link_key is not None and len(self.patient_link_key) < 16:
            raise ConfigError("audit.patient_link_key must be at least 16 bytes; generate one "
                              "with `python -c 'import secrets; print(secrets.token_hex(32))'`")


def read_link_key(path: str | Path) -> bytes:
    """The patient link key from a file; a ConfigError if unusable.

    A text file (UTF-8, e.g. ``secrets.token_hex(32)``) gives its stripped text, as it always
    did: the links already in a registry stay the same. A file that is not UTF-8 text (e.g.
    ``head -c 32 /dev/urandom``) gives its bytes as they are.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the patient link key ({exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        key = data  # random bytes: every byte is key, whitespace too
    else:  # what read_text() gave: universal newlines, then stripped
        key = text.replace("\r\n", "\n").replace("\r", "\n").strip().encode("utf-8")
    if len(key) < 16:
        raise ConfigError(f"{path}: the patient link key must be at least 16 bytes")
    return key
