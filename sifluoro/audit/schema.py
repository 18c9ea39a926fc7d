"""The dose registry's tables (SQLAlchemy 2 declarative, typed) and its versioned migrations.

One schema for SQLite (default, one file) and PostgreSQL (by URL). No patient name, ID or
birth date is stored: a study carries at most ``patient_key``, a keyed HMAC of the Patient ID
(see :class:`sifluoro.audit.settings.AuditSettings`).

Migrations are ordered functions in :data:`MIGRATIONS`; ``schema_version`` records each one
applied. :func:`open_registry` applies the missing ones in one transaction, so a database is
either at the old version or at the new one. To change the schema, append a function (DDL
through ``connection.execute``) and update the models; never edit an applied migration.
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sifluoro.errors import ConfigError

SCHEMA_VERSION = 6


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    """One row per migration applied."""

    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(DateTime)


class DeviceRow(Base):
    """An irradiating device as its reports and images name it."""

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("manufacturer", "model", "serial_number", "station_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    manufacturer: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(Text, default="")
    serial_number: Mapped[str] = mapped_column(Text, default="")
    station_name: Mapped[str] = mapped_column(Text, default="")


class StudyRow(Base):
    """One study's dose (docs/contract.md §4 summary fields) with its procedure label and date.
    A dose total nothing gives (a header reporting DAP only) is NULL, not 0 (schema version 3); so
    is a fluoroscopy or acquisition time nothing gives (version 4)."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(Text, unique=True)  # any length (v6)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    procedure: Mapped[str] = mapped_column(String(128), index=True)
    study_date: Mapped[date | None] = mapped_column(Date, index=True)
    patient_key: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))
    dose_source: Mapped[str] = mapped_column(String(16))
    n_events: Mapped[int] = mapped_column(Integer)
    n_planes: Mapped[int] = mapped_column(Integer)
    dap_gycm2: Mapped[float | None] = mapped_column(Float)
    air_kerma_mgy: Mapped[float | None] = mapped_column(Float)
    fluoro_time_s: Mapped[float | None] = mapped_column(Float)
    fluoro_dap_gycm2: Mapped[float | None] = mapped_column(Float)
    fluoro_air_kerma_mgy: Mapped[float | None] = mapped_column(Float)
    acquisition_dap_gycm2: Mapped[float | None] = mapped_column(Float)
    acquisition_air_kerma_mgy: Mapped[float | None] = mapped_column(Float)
    acquisition_time_s: Mapped[float | None] = mapped_column(Float)
    planes_from_report: Mapped[bool] = mapped_column(Boolean)
    srdl_exceeded: Mapped[str] = mapped_column(String(64), default="")
    ingested_at: Mapped[datetime] = mapped_column(DateTime)


class InstanceRow(Base):
    """A file taken for a study: an RDSR or an image run, with its content hash."""

    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(Text, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # "rdsr" | "image"
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)


class EventRow(Base):
    """One irradiation event (TID 10003) of a study, in report order."""

    __tablename__ = "irradiation_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    event_uid: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    plane: Mapped[str] = mapped_column(Text)
    start: Mapped[datetime | None] = mapped_column(DateTime)
    dap_gycm2: Mapped[float | None] = mapped_column(Float)
    air_kerma_mgy: Mapped[float | None] = mapped_column(Float)
    dose_source: Mapped[str] = mapped_column(String(16))
    kvp: Mapped[float | None] = mapped_column(Float)
    tube_current_ma: Mapped[float | None] = mapped_column(Float)
    pulse_width_ms: Mapped[float | None] = mapped_column(Float)
    pulse_rate_per_s: Mapped[float | None] = mapped_column(Float)
    n_pulses: Mapped[int | None] = mapped_column(Integer)
    irradiation_duration_s: Mapped[float | None] = mapped_column(Float)
    exposure_time_ms: Mapped[float | None] = mapped_column(Float)
    exposure_mas: Mapped[float | None] = mapped_column(Float)
    filter_al_mm: Mapped[float | None] = mapped_column(Float)
    filter_cu_mm: Mapped[float | None] = mapped_column(Float)
    primary_angle_deg: Mapped[float | None] = mapped_column(Float)
    secondary_angle_deg: Mapped[float | None] = mapped_column(Float)
    sid_mm: Mapped[float | None] = mapped_column(Float)
    source_to_isocenter_mm: Mapped[float | None] = mapped_column(Float)
    collimated_field_area_cm2: Mapped[float | None] = mapped_column(Float)
    reference_point: Mapped[str] = mapped_column(Text, default="")
    protocol: Mapped[str] = mapped_column(Text, default="")


class PlaneRow(Base):
    """Accumulated dose of one plane of a study (TID 10002)."""

    __tablename__ = "plane_totals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    plane: Mapped[str] = mapped_column(Text)
    dap_gycm2: Mapped[float | None] = mapped_column(Float)
    air_kerma_mgy: Mapped[float | None] = mapped_column(Float)
    fluoro_dap_gycm2: Mapped[float | None] = mapped_column(Float)
    fluoro_air_kerma_mgy: Mapped[float | None] = mapped_column(Float)
    acquisition_dap_gycm2: Mapped[float | None] = mapped_column(Float)
    acquisition_air_kerma_mgy: Mapped[float | None] = mapped_column(Float)
    fluoro_time_s: Mapped[float | None] = mapped_column(Float)
    acquisition_time_s: Mapped[float | None] = mapped_column(Float)
    n_radiographic_frames: Mapped[int | None] = mapped_column(Integer)
    reference_point: Mapped[str] = mapped_column(Text, default="")


class AlertRow(Base):
    """A dose level a study reached: NCRP 168 notification levels and SRDLs."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    level: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))
    value: Mapped[float] = mapped_column(Float)


class ScopeRow(Base):
    """A study whose dose a study's report covers: the Study UID of the report's Scope of
    Accumulation when it is not the report's own (schema version 6). That study's images are
    the report's study's, as ``dose summary`` takes them, also when they come in a later ingest."""

    __tablename__ = "report_scopes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    scope_study_instance_uid: Mapped[str] = mapped_column(Text, index=True)


Index("ix_studies_procedure_device", StudyRow.procedure, StudyRow.device_id)


def _v1(conn: Connection) -> None:
    """Devices, studies, instances, irradiation events, plane totals, alerts."""
    Base.metadata.create_all(conn, tables=[t for name, t in Base.metadata.tables.items()
                                           if name != "schema_version"])


#: (table, column, type) widened by version 2: free text from reports (a Philips reference
#: point is a sentence) and file sizes above 2 GiB. PostgreSQL refused them; SQLite keeps any
#: length in any column and 64-bit integers, so it has nothing to change.
_WIDENED = [("devices", c, "TEXT") for c in ("manufacturer", "model", "serial_number", "station_name")] + [
    ("irradiation_events", "plane", "TEXT"), ("irradiation_events", "reference_point", "TEXT"),
    ("irradiation_events", "protocol", "TEXT"), ("plane_totals", "plane", "TEXT"),
    ("plane_totals", "reference_point", "TEXT"), ("instances", "size_bytes", "BIGINT")]


def _v2(conn: Connection) -> None:
    """Free-text columns without a length limit; file sizes in 64 bits."""
    if conn.dialect.name != "postgresql":
        return
    for table, column, kind in _WIDENED:
        conn.exec_driver_sql(f'ALTER TABLE {table} ALTER COLUMN {column} TYPE {kind}')


#: the study dose totals made nullable by version 3, with the event attribute and kind that
#: decide whether a stored 0 was an unknown (a frozen copy of dose.records.DOSE_TOTALS as it
#: was then: an applied migration must not change with later code)
_NULLABLE_TOTALS = (("dap_gycm2", "dap_gycm2", None), ("air_kerma_mgy", "air_kerma_mgy", None),
                    ("fluoro_dap_gycm2", "dap_gycm2", "fluoroscopy"),
                    ("fluoro_air_kerma_mgy", "air_kerma_mgy", "fluoroscopy"),
                    ("acquisition_dap_gycm2", "dap_gycm2", "acquisition"),
                    ("acquisition_air_kerma_mgy", "air_kerma_mgy", "acquisition"))


def _v3(conn: Connection) -> None:
    """Study dose totals nullable: a total none of the study's events gives was stored as 0;
    it becomes NULL (and so do such plane totals), so SQL aggregates leave it out."""
    if conn.dialect.name == "postgresql":
        for column, _, _ in _NULLABLE_TOTALS:
            conn.exec_driver_sql(f"ALTER TABLE studies ALTER COLUMN {column} DROP NOT NULL")
    else:
        _rebuild_sqlite_studies(conn)
    for table, key, same_plane in (("studies", "id", ""),
                                   ("plane_totals", "study_id", " AND e.plane = plane_totals.plane")):
        for column, attr, kind in _NULLABLE_TOTALS:
            events = (f"FROM irradiation_events e WHERE e.study_id = {table}.{key}{same_plane}"
                      + ("" if kind is None else f" AND e.kind = '{kind}'"))
            conn.exec_driver_sql(
                f"UPDATE {table} SET {column} = NULL WHERE {column} = 0 AND EXISTS (SELECT 1 "
                f"{events}) AND NOT EXISTS (SELECT 1 {events} AND e.{attr} IS NOT NULL)")


#: the study time totals made nullable by version 4, with the event kind whose untimed events
#: made a stored 0 an unknown (frozen, as _NULLABLE_TOTALS)
_NULLABLE_TIMES = (("fluoro_time_s", "fluoroscopy"), ("acquisition_time_s", "acquisition"))


def _v4(conn: Connection) -> None:
    """Study time totals nullable: a fluoroscopy (acquisition) time that no plane total and
    none of the study's events of that kind gives was stored as 0; it becomes NULL."""
    if conn.dialect.name == "postgresql":
        for column, _ in _NULLABLE_TIMES:
            conn.exec_driver_sql(f"ALTER TABLE studies ALTER COLUMN {column} DROP NOT NULL")
    else:
        _rebuild_sqlite_studies(conn, "studies_v4")
    for column, kind in _NULLABLE_TIMES:
        events = f"FROM irradiation_events e WHERE e.study_id = studies.id AND e.kind = '{kind}'"
        conn.exec_driver_sql(
            f"UPDATE studies SET {column} = NULL WHERE {column} = 0 AND EXISTS (SELECT 1 {events}) "
            f"AND NOT EXISTS (SELECT 1 {events} AND (e.irradiation_duration_s IS NOT NULL OR "
            "e.exposure_time_ms IS NOT NULL OR e.pulse_width_ms IS NOT NULL OR "
            "(e.n_pulses > 0 AND e.pulse_rate_per_s >= 0.5))) AND NOT EXISTS (SELECT 1 FROM "
            f"plane_totals p WHERE p.study_id = studies.id AND p.{column} > 0)")


#: the plane dose totals of each time total's kind (frozen, as _NULLABLE_TIMES)
_TIME_DOSES = {"fluoro_time_s": ("fluoro_dap_gycm2", "fluoro_air_kerma_mgy"),
               "acquisition_time_s": ("acquisition_dap_gycm2", "acquisition_air_kerma_mgy")}


def _v5(conn: Connection) -> None:
    """What version 4 missed: a study with no events (a totals-only report) whose planes give
    a dose of the kind but no time stored 0 s for it; it becomes NULL, as an ingest stores it
    now (second review s12 #11). Version 4 applied stays as it was."""
    for column, doses in _TIME_DOSES.items():
        planes = "FROM plane_totals p WHERE p.study_id = studies.id"
        conn.exec_driver_sql(
            f"UPDATE studies SET {column} = NULL WHERE {column} = 0 AND NOT EXISTS (SELECT 1 "
            "FROM irradiation_events e WHERE e.study_id = studies.id) AND NOT EXISTS (SELECT 1 "
            f"{planes} AND p.{column} > 0) AND EXISTS (SELECT 1 {planes} AND "
            f"(p.{doses[0]} > 0 OR p.{doses[1]} > 0))")


#: UID columns widened by version 6: a UID over DICOM's 64 characters (a vendor's invalid
#: one, read everywhere else) made PostgreSQL refuse the whole study (review s24 #7)
_UID_COLUMNS = [("studies", "study_instance_uid"), ("instances", "sop_instance_uid"),
                ("irradiation_events", "event_uid")]


def _v6(conn: Connection) -> None:
    """The studies that reports cover besides their own (:class:`ScopeRow`; a report recorded
    before names none: its scope study's images stay apart, as they were); UIDs of any length
    (PostgreSQL; SQLite keeps any length)."""
    ScopeRow.__table__.create(conn, checkfirst=True)  # version 1 creates today's tables
    if conn.dialect.name == "postgresql":
        for table, column in _UID_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE TEXT")


def _rebuild_sqlite_studies(conn: Connection, name: str = "studies_v3") -> None:
    """SQLite cannot drop a NOT NULL: the table is rebuilt (SQLite's own procedure: a new table,
    the rows copied, the old one dropped and the new one renamed; foreign keys are off for the
    migration, see :func:`_migrate_sqlite`, so the drop cascades to nothing). The new table
    has today's columns and nullability: a later version only relaxes NOT NULLs, so building
    version 3 with them is version 3 plus what those versions would do anyway."""
    columns = ", ".join(c.name for c in StudyRow.__table__.columns)
    metadata = MetaData()
    DeviceRow.__table__.to_metadata(metadata)  # the copy's foreign key resolves against it
    new = StudyRow.__table__.to_metadata(metadata, name=name)
    for index in list(new.indexes):
        new.indexes.discard(index)
    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")  # left by a version before this fix
    new.create(conn)
    conn.exec_driver_sql(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM studies")
    conn.exec_driver_sql("DROP TABLE studies")
    conn.exec_driver_sql(f"ALTER TABLE {name} RENAME TO studies")
    for index in StudyRow.__table__.indexes:
        index.create(conn)


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [(1, _v1), (2, _v2), (3, _v3), (4, _v4),
                                                                (5, _v5), (6, _v6)]


def registry_url(db: str) -> str:
    """``db`` as a SQLAlchemy URL: a plain file path is a SQLite file."""
    return db if "://" in db else f"sqlite:///{db}"


def open_registry(url: str, *, lock_wait_s: float = 600.0) -> Engine:
    """An engine on the registry at ``url``, migrated to :data:`SCHEMA_VERSION`.

    Parameters
    ----------
    url : str
        A SQLAlchemy URL (``sqlite:///dose.db``, ``postgresql+psycopg://user@host/db``) or a
        plain file path, taken as a SQLite file.
    lock_wait_s : float
        SQLite: how long a write waits for another writer's transaction, s.

    Raises
    ------
    ConfigError
        The URL cannot be used, or the database is newer than this sifluoro.
    """
    url = registry_url(url)
    try:
        sqlite = url.startswith("sqlite")
        engine = create_engine(url, future=True,
                               connect_args={"timeout": lock_wait_s} if sqlite else {})
    except Exception as exc:  # bad URL or missing driver: say which setting is wrong
        raise ConfigError(f"--db {url!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        migrate(engine)
    except ConfigError:
        raise
    except Exception as exc:  # unreachable server, refused login...
        raise ConfigError(f"--db {engine.url.render_as_string(hide_password=True)}: cannot open "
                          f"the registry ({type(exc).__name__}: {exc})") from exc
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    # WAL with NORMAL sync: a commit survives a process crash; one fsync per checkpoint
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


#: PostgreSQL advisory lock held while the schema is migrated (two processes opening an old
#: registry at once take turns: the second finds it migrated)
_MIGRATION_LOCK_KEY = 0x5349464D


def migrate(engine: Engine) -> int:
    """Apply the missing migrations in one transaction; return the version reached."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            _migrate_sqlite(conn)
        else:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
                _apply_missing(conn)
    return SCHEMA_VERSION


def _migrate_sqlite(conn: Connection) -> None:
    """The migrations in one explicit transaction that holds the write lock from the start.
    The driver opens its own transactions only before data changes (DDL would commit alone:
    an interrupted migration left a half-built table), and a second process would read the
    versions before the first wrote them. Foreign keys are off meanwhile (settable outside a
    transaction only), so a table rebuild does not cascade its drop."""
    raw = conn.connection.dbapi_connection
    if _up_to_date(raw):  # the common case takes no write lock (a report beside an ingest)
        return
    level = raw.isolation_level
    raw.isolation_level = None
    try:
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute("BEGIN IMMEDIATE")
        try:
            _apply_missing(conn)
            if raw.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise ConfigError("the registry's migration left a broken foreign key; it was "
                                  "not applied")
            raw.execute("COMMIT")
        except BaseException:
            raw.execute("ROLLBACK")
            raise
    finally:
        raw.execute("PRAGMA foreign_keys=ON")
        raw.isolation_level = level


def _up_to_date(raw) -> bool:
    """Whether a SQLite registry has every migration (read without a lock; a newer one is
    left to :func:`_apply_missing` to refuse)."""
    try:
        done = {row[0] for row in raw.execute("SELECT version FROM schema_version")}
    except Exception:  # no registry yet
        return False
    finally:
        if raw.in_transaction:
            raw.rollback()
    return done == {version for version, _ in MIGRATIONS}


def _apply_missing(conn: Connection) -> None:
    SchemaVersion.__table__.create(conn, checkfirst=True)
    done = set(conn.execute(select(SchemaVersion.version)).scalars())
    newest = max(done, default=0)
    if newest > SCHEMA_VERSION:
        raise ConfigError(f"the registry is at schema version {newest}, newer than this "
                          f"sifluoro ({SCHEMA_VERSION}); upgrade sifluoro")
    for version, step in MIGRATIONS:
        if version not in done:
            step(conn)
            conn.execute(SchemaVersion.__table__.insert().values(
                version=version, applied_at=datetime.now(timezone.utc).replace(tzinfo=None)))


def table_names(engine: Engine) -> list[str]:
    """The registry's tables (for checks and tests)."""
    return sorted(inspect(engine).get_table_names())
