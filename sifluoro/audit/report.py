"""``sifluoro audit report``: DRL-style dose statistics of the registry for a medical physicist.

Per procedure and device: number of studies, median and 75th percentile (the percentile
national DRLs are set at) of DAP, reference air kerma and fluoroscopy time, each over the
studies that know it (their number: ``{quantity}_n``), and how many studies' totals are lower
bounds (``lower_bound_studies``: some irradiation events give no DAP or Ka,r, or some
fluoroscopy events no beam-on time); the studies above
the group's 75th percentile times ``outlier_factor`` or above an alert level / SRDL; a monthly
trend per procedure. Written as CSV files, PNG charts (matplotlib, Agg) and one
self-contained HTML file (charts inline as base64 PNG, no external URL; a Content Security
Policy forbids any). HTML cells and CSV fields come from the same :func:`cell` function, so
their numbers are equal.

Percentiles are NumPy's linear interpolation (Hyndman & Fan type 7, as R's default).
"""
from __future__ import annotations

import base64
import csv
import html
import io
import logging
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from sifluoro.audit.parse import normalise_procedure, procedure_key
from sifluoro.audit.schema import DeviceRow, EventRow, StudyRow, open_registry
from sifluoro.audit.settings import AuditSettings
from sifluoro.dose.records import FLUOROSCOPY, PLAUSIBLE_PULSE_RATE
from sifluoro.outfiles import replaced

log = logging.getLogger(__name__)

QUANTITIES = (("dap_gycm2", "DAP", "Gy·cm²"), ("air_kerma_mgy", "Ka,r", "mGy"),
              ("fluoro_time_s", "Fluoro time", "s"))
FORMATS = {"dap_gycm2": "{:.3f}", "air_kerma_mgy": "{:.2f}", "fluoro_time_s": "{:.1f}",
           "factor": "{:.2f}"}
# ``{quantity}_n``: how many of the group's studies know it (its median and P75 are of those)
SUMMARY_COLUMNS = ["procedure", "device", "studies"] + [
    f"{stat}_{q}" for q, _, _ in QUANTITIES for stat in ("median", "p75")] + [
    f"{q}_n" for q, _, _ in QUANTITIES] + ["lower_bound_studies", "outliers"]
OUTLIER_COLUMNS = ["study_instance_uid", "study_date", "procedure", "device", "dap_gycm2",
                   "air_kerma_mgy", "fluoro_time_s", "reasons"]
TREND_COLUMNS = ["procedure", "month", "studies", "median_dap_gycm2", "p75_dap_gycm2",
                 "median_air_kerma_mgy", "median_fluoro_time_s"]
HTML_OUTLIER_ROWS = 200


def cell(column: str, value) -> str:
    """The text of one value in both the CSV files and the HTML (one function: equal numbers)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    for name, spec in FORMATS.items():
        if column.endswith(name):
            return spec.format(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote, and how much it covered."""

    html: Path | None  # None: no study matched, nothing written
    csv: dict[str, Path]
    charts: dict[str, Path]
    studies: int
    groups: int
    outliers: int
    procedures: tuple[str, ...] = ()  # the stored labels ``procedure`` matched
    unknown_dose: int = 0  # of ``studies``, those whose dose is unknown (fluoroscopy time only)


@dataclass(frozen=True)
class Tables:
    """The report's tables as rows of cell strings (header first)."""

    summary: list[list[str]]
    outliers: list[list[str]]
    trend: list[list[str]]
    n_studies: int
    n_outliers: int


def load_studies(engine, *, start: date | None = None, end: date | None = None,
                 procedure: str | list[str] | None = None) -> dict[str, np.ndarray]:
    """The studies in the date range (inclusive) and procedure label(s), as column arrays."""
    # totals summed over events some of which give no DAP or Ka,r are lower bounds (a
    # report's own accumulated totals are the device's whole count)
    def missing(column):  # some event leaves the quantity out, while the study total has it
        return (select(EventRow.id).where(EventRow.study_id == StudyRow.id)
                .where(column.is_(None)).exists())
    # a fluoroscopy event that says nothing of its beam-on time (dose.records.is_timed) leaves
    # the study's fluoroscopy time short of its whole
    untimed_fluoro = (select(EventRow.id).where(EventRow.study_id == StudyRow.id)
                      .where(EventRow.kind == FLUOROSCOPY,
                             EventRow.irradiation_duration_s.is_(None),
                             EventRow.exposure_time_ms.is_(None), EventRow.pulse_width_ms.is_(None),
                             ~((func.coalesce(EventRow.n_pulses, 0) > 0)
                               & (func.coalesce(EventRow.pulse_rate_per_s, 0.0)
                                  >= PLAUSIBLE_PULSE_RATE)))
                      .exists())
    partial = ~StudyRow.planes_from_report & (
        (missing(EventRow.dap_gycm2) & StudyRow.dap_gycm2.is_not(None))
        | (missing(EventRow.air_kerma_mgy) & StudyRow.air_kerma_mgy.is_not(None))
        | (untimed_fluoro & StudyRow.fluoro_time_s.is_not(None)))
    query = (select(StudyRow.study_instance_uid, StudyRow.study_date, StudyRow.procedure,
                    DeviceRow.manufacturer, DeviceRow.model, DeviceRow.station_name,
                    StudyRow.dap_gycm2, StudyRow.air_kerma_mgy, StudyRow.fluoro_time_s,
                    StudyRow.srdl_exceeded, DeviceRow.id, DeviceRow.serial_number, partial)
             .join(DeviceRow, DeviceRow.id == StudyRow.device_id)
             .order_by(StudyRow.procedure, StudyRow.study_date, StudyRow.study_instance_uid))
    # a study whose dose is wholly unknown (no report, no technique) is not a 0 in a DRL
    # statistic: its DAP and Ka,r are NULL (NaN, left out of theirs), its fluoroscopy time
    # counts, and it is counted apart (:func:`count_unknown_dose`; user review s20 P1: it was
    # dropped whole, its known fluoroscopy time too, and only the HTML said so)
    query = _in_scope(query, start, end, procedure)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    columns = list(zip(*rows)) if rows else [()] * 13
    # a label stored before the labels kept "7,5" and "b/s" ("Kardiologisk 7 5 b s") is one
    # group with its newer form: named by the form that keeps the punctuation
    labels = _one_label_per_key(set(columns[2]))
    procedures = [labels[p] for p in columns[2]]
    devices = [" ".join(x for x in (m, mo) if x) + (f" ({st})" if st else "")
               for m, mo, st in zip(columns[3], columns[4], columns[5])]
    # two C-arms of one model and no station names are two groups: the serial number tells
    ids_by_label: dict[str, set] = {}
    for label, device_id in zip(devices, columns[10]):
        ids_by_label.setdefault(label, set()).add(device_id)
    devices = [f"{label} [serial {serial or '?'}]" if len(ids_by_label[label]) > 1 else label
               for label, serial in zip(devices, columns[11])]
    return {
        "uid": np.array(columns[0], dtype=object),
        "date": np.array(columns[1], dtype=object),
        "procedure": np.array(procedures, dtype=object),
        "device": np.array(devices, dtype=object),
        # a total nothing gave is NULL (schema version 3): NaN, left out of its statistics
        "dap_gycm2": np.array(columns[6], dtype=float),
        "air_kerma_mgy": np.array(columns[7], dtype=float),
        "fluoro_time_s": np.array(columns[8], dtype=float),
        "srdl": np.array(columns[9], dtype=object),
        "lower_bound": np.array([bool(x) for x in columns[12]], dtype=bool),
    }


def count_unknown_dose(engine, *, start: date | None = None, end: date | None = None,
                       procedure: str | list[str] | None = None) -> int:
    """Studies in scope whose dose is unknown (in the fluoroscopy-time statistics only)."""
    query = _in_scope(select(func.count()).select_from(StudyRow)
                      .where(StudyRow.dose_source == "none"), start, end, procedure)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def procedure_counts(engine) -> dict[str, int]:
    """Every procedure label in the registry and its number of studies."""
    query = select(StudyRow.procedure, func.count()).group_by(StudyRow.procedure)
    with engine.connect() as conn:
        return {label: int(n) for label, n in conn.execute(query).all()}


def matching_procedures(labels, text: str) -> list[str]:
    """The stored ``labels`` a ``--procedure`` text means: the text normalised as a study
    description is (``procedure_label``'s rules), or the text itself, compared loosely (case
    and punctuation ignored), so "DSA Body", "dsa body" and "SIJ inj. left" find their studies."""
    wanted = {procedure_key(normalise_procedure(text)), procedure_key(text)}
    return sorted(label for label in labels if procedure_key(label) in wanted)


def _one_label_per_key(labels) -> dict[str, str]:
    """Each label → the label its group is shown under (those of one :func:`procedure_key`
    are one group; the form with the most punctuation kept names it)."""
    by_key: dict[str, list[str]] = {}
    for label in labels:
        by_key.setdefault(procedure_key(label), []).append(label)
    name = {k: min(group, key=lambda x: (-sum(c in ",./" for c in x), x))
            for k, group in by_key.items()}
    return {label: name[procedure_key(label)] for label in labels}


def _in_scope(query, start: date | None, end: date | None, procedure):
    if start is not None:
        query = query.where(StudyRow.study_date >= start)
    if end is not None:
        query = query.where(StudyRow.study_date <= end)
    if isinstance(procedure, str):
        procedure = [procedure] if procedure else None
    if procedure is not None:
        query = query.where(StudyRow.procedure.in_(list(procedure)))
    return query


def build_tables(data: dict[str, np.ndarray], settings: AuditSettings) -> Tables:
    """Group statistics, outliers and the monthly trend, as cell strings."""
    n = len(data["uid"])
    dose = settings.dose
    keys = np.array([f"{p}\x00{d}" for p, d in zip(data["procedure"], data["device"])], dtype=object)
    groups, inverse = np.unique(keys, return_inverse=True) if n else (np.array([]), np.array([], int))
    reasons: list[list[str]] = [[] for _ in range(n)]
    summary = [SUMMARY_COLUMNS]
    group_rows = []
    for g, key in enumerate(groups):
        members = np.flatnonzero(inverse == g)
        stats, counts = [], []
        for q, label, _ in QUANTITIES:
            values = data[q][members]
            known = values[~np.isnan(values)]
            median, p75 = np.percentile(known, [50, 75]) if known.size else (np.nan, np.nan)
            stats += [median, p75]
            counts.append(int(known.size))
            limit = p75 * settings.outlier_factor
            for i in members[values > limit]:
                reasons[i].append(f"{label} > {settings.outlier_factor:g} x P75 ({cell(q, limit)})")
        group_rows.append((key.split("\x00"), len(members), stats + counts, members))
    alert_levels = (("air_kerma_mgy", dose.air_kerma_first_alert_mgy, "Ka,r notification level"),)
    for q, level, label in alert_levels:
        if level > 0:
            for i in np.flatnonzero(data[q] >= level):
                reasons[i].append(f"{label} ({cell(q, level)} mGy)")
    for i, srdl in enumerate(data["srdl"]):
        if srdl:
            reasons[i].append(f"SRDL: {srdl.replace(',', ', ')}")
    flagged = np.array([bool(r) for r in reasons], dtype=bool)
    for (procedure, device), count, stats, members in group_rows:
        summary.append([procedure, device, cell("studies", count)]
                       + [cell(c, v) for c, v in zip(SUMMARY_COLUMNS[3:-2], stats)]
                       + [cell("lower_bound_studies", int(data["lower_bound"][members].sum())),
                          cell("outliers", int(flagged[members].sum()))])
    outliers = [OUTLIER_COLUMNS]
    # a DAP unknown (NaN) sorts last: a NaN key made the order inconsistent (review s20 #5)
    order = sorted(np.flatnonzero(flagged), key=lambda i: (
        np.isnan(data["dap_gycm2"][i]), -np.nan_to_num(data["dap_gycm2"][i]), data["uid"][i]))
    for i in order:
        outliers.append([data["uid"][i], cell("date", data["date"][i]), data["procedure"][i],
                         data["device"][i]] + [cell(q, data[q][i]) for q, _, _ in QUANTITIES]
                        + ["; ".join(reasons[i])])
    return Tables(summary, outliers, _trend(data), n, int(flagged.sum()))


def _trend(data: dict[str, np.ndarray]) -> list[list[str]]:
    rows = [TREND_COLUMNS]
    dated = np.array([d is not None for d in data["date"]], dtype=bool)
    if not dated.any():
        return rows
    months = np.array([f"{d.year:04d}-{d.month:02d}" if d is not None else "" for d in data["date"]],
                      dtype=object)
    keys = np.array([f"{p}\x00{m}" for p, m in zip(data["procedure"], months)], dtype=object)
    groups, inverse = np.unique(keys[dated], return_inverse=True)
    index = np.flatnonzero(dated)
    for g, key in enumerate(groups):
        members = index[inverse == g]
        procedure, month = key.split("\x00")
        dap = _known(data["dap_gycm2"][members])
        kerma = _known(data["air_kerma_mgy"][members])
        rows.append([procedure, month, cell("studies", len(members)),
                     cell("median_dap_gycm2", np.median(dap) if dap.size else None),
                     cell("p75_dap_gycm2", np.percentile(dap, 75) if dap.size else None),
                     cell("median_air_kerma_mgy", np.median(kerma) if kerma.size else None),
                     cell("median_fluoro_time_s", np.median(time) if (time := _known(
                         data["fluoro_time_s"][members])).size else None)])
    return rows


def _known(values: np.ndarray) -> np.ndarray:
    return values[~np.isnan(values)]


def write_report(db, out: str | Path, *, start: date | None = None, end: date | None = None,
                 procedure: str | None = None, settings: AuditSettings | None = None) -> ReportFiles:
    """Write ``drl_summary.csv``, ``outliers.csv``, ``monthly_trend.csv``, the charts and
    ``report.html`` under ``out``; nothing when no study matches (``studies`` 0, ``html``
    None: an empty report would read as an audit of nothing).

    Parameters
    ----------
    db : str or Engine
        Registry URL (or SQLite file path) or engine.
    out : path
        Output folder (created).
    start, end : date, optional
        Inclusive study date range.
    procedure : str, optional
        Only studies of this procedure: a stored label or a description as the device writes
        it (see :func:`matching_procedures`).
    settings : AuditSettings, optional
        Outlier factor and alert levels.
    """
    settings = settings or AuditSettings()
    engine = open_registry(db) if isinstance(db, str) else db
    out = Path(out)
    labels = None
    if procedure:
        labels = matching_procedures(procedure_counts(engine), procedure)
    data = load_studies(engine, start=start, end=end, procedure=labels)
    tables = build_tables(data, settings)
    if not tables.n_studies:
        return ReportFiles(None, {}, {}, 0, 0, 0, tuple(labels or ()))
    out.mkdir(parents=True, exist_ok=True)
    csv_paths = {"summary": out / "drl_summary.csv", "outliers": out / "outliers.csv",
                 "trend": out / "monthly_trend.csv"}
    for name, rows in (("summary", tables.summary), ("outliers", tables.outliers),
                       ("trend", tables.trend)):
        _write_csv(csv_paths[name], rows)
    charts = _charts(data, tables, settings)
    chart_paths = {}
    for name, png in charts.items():
        chart_paths[name] = out / f"{name}.png"
        _atomic_write(chart_paths[name], png)
    unknown = count_unknown_dose(engine, start=start, end=end, procedure=labels)
    page = _html(tables, charts, settings, start=start, end=end, procedure=procedure,
                 unknown_dose=unknown)
    html_path = out / "report.html"
    _atomic_write(html_path, page.encode("utf-8"))
    return ReportFiles(html_path, csv_paths, chart_paths, tables.n_studies,
                       len(tables.summary) - 1, tables.n_outliers, tuple(labels or ()), unknown)


def _write_csv(path: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[_csv_cell(c) for c in row] for row in rows])
    _atomic_write(path, buf.getvalue().encode("utf-8"))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(cell):
    """A text cell that a spreadsheet would run as a formula (device and procedure names come
    from the reports' headers) gets a leading apostrophe; numbers, negative ones too, are kept."""
    if not isinstance(cell, str) or not cell.startswith(_FORMULA_START):
        return cell
    try:
        float(cell)
        return cell
    except ValueError:
        return "'" + cell


def _atomic_write(path: Path, data: bytes) -> None:
    with replaced(path, "wb") as out:
        out.write(data)


def _number(cell: str) -> float:
    """A table cell as a number; an empty cell (unknown: no study of the group gives it) NaN,
    which a chart leaves out."""
    return float(cell) if cell != "" else float("nan")


def _charts(data: dict[str, np.ndarray], tables: Tables, settings: AuditSettings) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    charts: dict[str, bytes] = {}
    if tables.n_studies == 0:
        return charts
    rows = tables.summary[1:]
    fig = Figure(figsize=(9, 0.45 * len(rows) + 1.6), dpi=100)
    ax = fig.add_subplot()
    labels = [f"{r[0]} | {r[1]}" for r in rows]
    y = np.arange(len(rows))
    median, p75 = [_number(r[3]) for r in rows], [_number(r[4]) for r in rows]
    ax.barh(y - 0.2, median, height=0.4, label="median", color="#4C72B0")
    ax.barh(y + 0.2, p75, height=0.4, label="75th percentile", color="#DD8452")
    for k in np.flatnonzero(np.isnan(median)):  # a group whose every DAP is unknown
        ax.text(0, y[k], " DAP unknown", va="center", fontsize=8, color="#555555")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("DAP (Gy·cm²)")
    ax.set_title("DAP per procedure and device")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    charts["dap_by_group"] = _png(fig)

    trend = tables.trend[1:]
    if trend:
        fig = Figure(figsize=(9, 4), dpi=100)
        ax = fig.add_subplot()
        months = sorted({r[1] for r in trend})
        for proc in sorted({r[0] for r in trend}):
            mine = {r[1]: _number(r[3]) for r in trend if r[0] == proc and r[3] != ""}
            ax.plot([months.index(m) for m in sorted(mine)], [mine[m] for m in sorted(mine)],
                    marker="o", ms=3, label=proc)
        step = max(1, len(months) // 12)
        ax.set_xticks(range(0, len(months), step), months[::step], rotation=45, fontsize=8)
        ax.set_ylabel("median DAP (Gy·cm²)")
        ax.set_title("Monthly median DAP per procedure")
        ax.legend(fontsize=8)
        fig.tight_layout()
        charts["monthly_trend"] = _png(fig)

    fig = Figure(figsize=(9, 4), dpi=100)
    ax = fig.add_subplot()
    positive = data["dap_gycm2"][data["dap_gycm2"] > 0]
    if positive.size:
        bins = np.geomspace(positive.min(), positive.max() * 1.0001, 50) if positive.min() < positive.max() else 10
        for proc in sorted(set(data["procedure"])):
            values = data["dap_gycm2"][(data["procedure"] == proc) & (data["dap_gycm2"] > 0)]
            if values.size:
                ax.hist(values, bins=bins, histtype="step", label=proc)
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no study of known DAP", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("DAP (Gy·cm²)")
    ax.set_ylabel("studies")
    ax.set_title("DAP distribution per procedure")
    fig.tight_layout()
    charts["dap_distribution"] = _png(fig)
    return charts


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f2f2f2}p.note{color:#555;font-size:13px}img{max-width:100%;display:block;margin:10px 0}
"""
# Fails loudly (a console error) if an inline chart did not decode: the test's check.
_SCRIPT = """window.addEventListener("load",function(){var bad=[];
for(var i=0;i<document.images.length;i++){var im=document.images[i];if(!im.complete||!im.naturalWidth)bad.push(im.alt);}
if(bad.length)console.error("charts failed to render: "+bad.join(", "));
document.body.setAttribute("data-charts-ok",bad.length?"no":"yes");});"""


def _html(tables: Tables, charts: dict[str, bytes], settings: AuditSettings, *,
          start: date | None, end: date | None, procedure: str | None,
          unknown_dose: int = 0) -> str:
    e = html.escape
    scope = ", ".join(x for x in (f"from {start}" if start else "", f"to {end}" if end else "",
                                  f"procedure {procedure}" if procedure else "") if x) or "all studies"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
             'img-src data:; style-src \'unsafe-inline\'; script-src \'unsafe-inline\'">',
             "<title>sifluoro dose audit</title>", f"<style>{_CSS}</style>",
             f"<script>{_SCRIPT}</script></head><body>",
             "<h1>Fluoroscopy dose audit</h1>",
             f'<p class="note">{e(scope)}: {tables.n_studies} '
             f'{"study" if tables.n_studies == 1 else "studies"}, {tables.n_outliers} flagged'
             + (f"; {unknown_dose} of them of unknown dose (no dose report, no technique to "
                "estimate it): in the fluoroscopy-time statistics only" if unknown_dose else "")
             + ". A study whose air kerma or DAP none of its irradiation events gives counts in "
             "the other statistics only; one whose events give them only in part counts with "
             "its partial total (a lower bound: lower_bound_studies). "
             f"Generated {e(datetime.now().strftime('%Y-%m-%d %H:%M'))} by sifluoro. DAP in Gy·cm², "
             "reference air kerma (Ka,r) in mGy, fluoroscopy time in s. P75 = 75th percentile "
             "(linear interpolation), the statistic diagnostic reference levels are set at.</p>",
             "<h2>Per procedure and device</h2>", _table(tables.summary, "summary")]
    for name, title in (("dap_by_group", "DAP per procedure and device"),
                        ("monthly_trend", "Monthly trend"), ("dap_distribution", "DAP distribution")):
        if name in charts:
            data = base64.b64encode(charts[name]).decode("ascii")
            parts.append(f'<img alt="{e(title)}" src="data:image/png;base64,{data}">')
    flagged = tables.outliers
    parts += ["<h2>Outliers</h2>",
              f'<p class="note">Studies above {settings.outlier_factor:g} x the 75th percentile of '
              f"their procedure and device group (DAP, Ka,r or fluoroscopy time), or above the "
              f"first Ka,r notification level ({cell('air_kerma_mgy', settings.dose.air_kerma_first_alert_mgy)} mGy) "
              "or a substantial radiation dose level. "
              + (f"The {HTML_OUTLIER_ROWS} highest DAP are shown; all {len(flagged) - 1} are in "
                 "outliers.csv." if len(flagged) - 1 > HTML_OUTLIER_ROWS else "") + "</p>",
              _table(flagged[:HTML_OUTLIER_ROWS + 1], "outliers"),
              "<h2>Monthly trend</h2>", _table(tables.trend, "trend"), "</body></html>"]
    return "\n".join(parts) + "\n"


def _table(rows: list[list[str]], name: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in rows[0])
    body = []
    for row in rows[1:]:
        cells = "".join(f'<td class="n">{e(v)}</td>' if _numeric(v) else f"<td>{e(v)}</td>" for v in row)
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="{name}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
