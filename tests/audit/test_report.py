"""The audit report: statistics checked independently, HTML numbers equal to the CSV, and the
HTML rendered by headless Chromium without a console message."""
from __future__ import annotations

import csv
import shutil
import statistics
import struct
import subprocess
import sys
from datetime import date
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sifluoro.audit.ingest import ingest
from sifluoro.audit.report import write_report
from sifluoro.audit.schema import StudyRow, open_registry
from sifluoro.audit.synthetic import insert_synthetic_studies
from sifluoro.dose.summary import summarize, table
from tests.audit.corpus import write_corpus

WINDOW = (1280, 2000)


class _Tables(HTMLParser):
    """Rows of every <table id=...> as lists of cell texts."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._row = self._cell = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs)["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _html_tables(path: Path) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.tables


@pytest.fixture()
def registry(db_url, tmp_path):
    write_corpus(tmp_path / "in")
    engine = open_registry(db_url)
    ingest([tmp_path / "in"], engine)
    insert_synthetic_studies(engine, 3000, seed=5)
    yield db_url, engine
    engine.dispose()


def test_report_cli_html_equals_csv_and_statistics_are_right(registry, tmp_path):
    db_url, engine = registry
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "sifluoro", "audit", "report", "--db", db_url,
                    "--out", str(out), "-q"], check=True, timeout=120)
    for name in ("report.html", "drl_summary.csv", "outliers.csv", "monthly_trend.csv",
                 "dap_by_group.png", "monthly_trend.png", "dap_distribution.png"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    tables = _html_tables(out / "report.html")
    summary = _csv(out / "drl_summary.csv")
    assert tables["summary"] == summary
    assert tables["trend"] == _csv(out / "monthly_trend.csv")
    outliers = _csv(out / "outliers.csv")
    assert tables["outliers"] == outliers[:201] and len(outliers) > 1
    # the statistics, recomputed here with the standard library from the registry's rows
    from sqlalchemy import text
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT s.procedure, d.manufacturer, d.model, d.station_name, "
                                 "s.dap_gycm2, s.fluoro_time_s FROM studies s JOIN devices d "
                                 "ON d.id = s.device_id")).all()
    groups: dict[tuple, list] = {}
    for proc, man, model, station, dap, fluoro in rows:
        groups.setdefault((proc, f"{man} {model} ({station})"), []).append((dap, fluoro))
    assert len(summary) - 1 == len(groups)
    assert sum(int(r[2]) for r in summary[1:]) == len(rows) == 3000 + 14
    for r in summary[1:]:
        values = groups[(r[0], r[1])]
        daps = [v[0] for v in values]
        assert r[3] == f"{statistics.median(daps):.3f}"
        if len(daps) > 1:
            assert r[4] == f"{statistics.quantiles(daps, n=4, method='inclusive')[2]:.3f}"
        assert r[7] == f"{statistics.median(v[1] for v in values):.1f}"


def test_report_filters_by_date_and_procedure(registry, tmp_path):
    db_url, _ = registry
    files = write_report(db_url, tmp_path / "r", start=date(2024, 3, 1), end=date(2024, 5, 31),
                         procedure="SI joint injection")
    summary = _csv(files.csv["summary"])
    assert {r[0] for r in summary[1:]} == {"SI joint injection"}
    months = {r[1] for r in _csv(files.csv["trend"])[1:]}
    assert months == {"2024-03", "2024-04", "2024-05"}
    assert files.studies == sum(int(r[2]) for r in summary[1:]) > 0


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium not found: install the Debian package `chromium` "
                "(apt-get install -y chromium); the report rendering test must run", pytrace=False)


def test_report_renders_in_headless_chromium_without_console_messages(tmp_path):
    engine = open_registry(f"sqlite:///{tmp_path / 'r.db'}")
    insert_synthetic_studies(engine, 2000, seed=9)
    files = write_report(engine, tmp_path / "report")
    browser = _chromium()
    shot = tmp_path / "report.png"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run",
              f"--user-data-dir={tmp_path / 'profile'}"]
    url = files.html.resolve().as_uri()
    run = subprocess.run([*common, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                          f"--window-size={WINDOW[0]},{WINDOW[1]}", url],
                         capture_output=True, text=True, timeout=120)
    console = [line for line in (run.stdout + run.stderr).splitlines() if ":CONSOLE" in line]
    assert console == [], console
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == WINDOW
    dom = subprocess.run([*common, "--dump-dom", "--virtual-time-budget=3000", url],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-charts-ok="yes"' in dom  # every inline chart decoded
    engine.dispose()


def test_studies_whose_dose_is_unknown_are_left_out_of_the_dose_statistics_and_counted(tmp_path, capsys):
    """Images with no dose attributes and no kVp: their studies entered the median and P75 as
    0 Gy·cm² (median 2.0 instead of 3.0 here) and nothing said so (review s10 B#4). Their
    known fluoroscopy time counts, and the console says how many (user review s20 P1: they
    were dropped whole, and only the HTML said so)."""
    from tests.dicom_fixtures import RunSpec, technique, write_study

    techs = [technique(reported_dap_gycm2=d, reported_air_kerma_mgy=10 * d) for d in (2.0, 3.0, 4.0)]
    techs += [technique(kvp=None)] * 2
    for k, tech in enumerate(techs):
        write_study(tmp_path / "img" / f"s{k}", [RunSpec(0.0, n_frames=5, tech=tech)])
    db = f"sqlite:///{tmp_path / 'r.db'}"
    ingest([tmp_path / "img"], db)
    files = write_report(db, tmp_path / "report")
    rows = list(csv.DictReader(open(files.csv["summary"])))
    assert [(r["studies"], float(r["median_dap_gycm2"]), r["dap_gycm2_n"], r["fluoro_time_s_n"])
            for r in rows] == [("5", 3.0, "3", "5")]
    assert (files.studies, files.unknown_dose) == (5, 2)
    assert "5 studies, 0 flagged; 2 of them of unknown dose" in files.html.read_text()
    from sifluoro.cli import main

    assert main(["audit", "report", "--db", db, "--out", str(tmp_path / "r2")]) == 0
    assert capsys.readouterr().out.startswith("5 studies (2 of unknown dose: fluoroscopy time only), ")


def test_two_c_arms_of_one_model_are_two_groups(tmp_path, monkeypatch):
    """Same manufacturer and model, no station names, two serial numbers: one merged group
    with a median of both rooms (review s10 B#11)."""
    import tests.dicom_fixtures as fx
    from sifluoro.model import Device

    for k, (serial, dap) in enumerate([("R1", 2.0), ("R1", 3.0), ("R2", 10.0), ("R2", 12.0)]):
        monkeypatch.setattr(fx, "DEVICE", Device("ACME Medical", "C-Arm 9000", serial, ""))
        fx.write_study(tmp_path / "img" / f"s{k}",
                       [fx.RunSpec(0.0, n_frames=5, tech=fx.technique(reported_dap_gycm2=dap))])
    db = f"sqlite:///{tmp_path / 'r.db'}"
    ingest([tmp_path / "img"], db)
    rows = list(csv.DictReader(open(write_report(db, tmp_path / "report").csv["summary"])))
    assert [(r["device"], float(r["median_dap_gycm2"])) for r in rows] == [
        ("ACME Medical C-Arm 9000 [serial R1]", 2.5), ("ACME Medical C-Arm 9000 [serial R2]", 11.0)]


def test_an_air_kerma_no_event_gives_is_left_out_of_its_statistics(tmp_path):
    """Headers that report DAP only, with no technique to estimate air kerma: the study's Ka,r
    is unknown, was stored as 0 in its total, and the DRL Ka,r median/P75 read 0.00 (review s10
    C#1). Such studies count in the DAP statistics only; the registry holds NULL, and so does
    ``dose summary --json``."""
    from tests.dicom_fixtures import RunSpec, technique, write_study

    techs = [technique(reported_dap_gycm2=d, reported_air_kerma_mgy=10 * d) for d in (2.0, 4.0)]
    techs += [technique(kvp=None, reported_dap_gycm2=d) for d in (1.0, 3.0, 5.0)]
    for k, tech in enumerate(techs):
        write_study(tmp_path / "img" / f"s{k}", [RunSpec(0.0, n_frames=5, tech=tech)])
    db = f"sqlite:///{tmp_path / 'r.db'}"
    ingest([tmp_path / "img"], db)
    (row,) = list(csv.DictReader(open(write_report(db, tmp_path / "report").csv["summary"])))
    assert row["studies"] == "5" and float(row["median_dap_gycm2"]) == pytest.approx(3.0)
    assert float(row["median_air_kerma_mgy"]) == pytest.approx(30.0)  # of the two that know it
    engine = open_registry(db)
    with engine.connect() as conn:
        stored = conn.execute(select(StudyRow.air_kerma_mgy, StudyRow.dap_gycm2)).all()
    engine.dispose()
    assert sorted(k is None for k, _ in stored) == [False, False, True, True, True]
    assert all(d > 0 for _, d in stored)
    (dap_only,), _ = summarize([tmp_path / "img" / "s2"])
    assert dap_only.summary()["air_kerma_mgy"] is None and dap_only.summary()["dap_gycm2"] == pytest.approx(1.0)
    assert "unknown" in table([dap_only])


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted(tmp_path):
    """Procedure and device names come from the files' headers: one that starts like a formula
    must reach the CSV as text (a leading apostrophe), numbers (negative ones too) unchanged."""
    engine = open_registry(f"sqlite:///{tmp_path / 'r.db'}")
    insert_synthetic_studies(engine, 200, seed=3)
    hostile = '=HYPERLINK("http://x","click")'
    with engine.begin() as conn:
        conn.execute(StudyRow.__table__.update().values(procedure=hostile))
    files = write_report(engine, tmp_path / "report")
    cells = [c for row in _csv(files.csv["summary"]) for c in row]
    assert "'" + hostile in cells and hostile not in cells
    assert all(not c.startswith(("=", "+", "@")) for c in cells)
    engine.dispose()


def test_the_summary_says_how_many_studies_each_statistic_is_of(tmp_path):
    """Each quantity's median and P75 are of the studies that know it, while ``studies``
    counts them all; nothing said how many (first review s12): ``{quantity}_n`` does."""
    from tests.dose.rdsr_fixtures import build_rdsr, save

    timed = {"dap_total": 10.0, "rp_total": 100.0, "fl_dap": 10.0, "fl_rp": 100.0, "fl_time": 60.0}
    untimed = {k: v for k, v in timed.items() if k != "fl_time"}
    for k, totals in enumerate((timed, timed, untimed)):
        save(build_rdsr([], accumulated={"single": totals}), tmp_path / "in" / f"r{k}.dcm")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    ingest([tmp_path / "in"], db)
    files = write_report(db, tmp_path / "report")
    (row,) = list(csv.DictReader(open(files.csv["summary"])))
    assert row["studies"] == "3"
    assert (row["dap_gycm2_n"], row["air_kerma_mgy_n"], row["fluoro_time_s_n"]) == ("3", "3", "2")
    assert float(row["median_fluoro_time_s"]) == pytest.approx(60.0)
    assert "fluoro_time_s_n" in files.html.read_text()


def test_the_summary_counts_the_studies_whose_totals_are_lower_bounds(db_url, tmp_path):
    """A study of two runs, one whose header reports DAP only and no technique: its Ka,r total
    leaves that run out. It counted in the Ka,r median as if whole, and nothing said so. A
    study whose Ka,r no run gives is not a lower bound: its Ka,r is unknown, left out."""
    from tests.dicom_fixtures import RunSpec, technique, write_study

    whole = technique(reported_dap_gycm2=2.0, reported_air_kerma_mgy=20.0)
    dap_only = technique(kvp=None, reported_dap_gycm2=3.0)
    write_study(tmp_path / "img" / "s0", [RunSpec(0.0, n_frames=3, tech=whole)])
    write_study(tmp_path / "img" / "s1", [RunSpec(0.0, n_frames=3, tech=whole),
                                          RunSpec(30.0, n_frames=3, tech=dap_only)])
    write_study(tmp_path / "img" / "s2", [RunSpec(0.0, n_frames=3, tech=dap_only)])
    ingest([tmp_path / "img"], db_url)
    files = write_report(db_url, tmp_path / "report")
    (row,) = list(csv.DictReader(open(files.csv["summary"])))
    assert row["studies"] == "3" and row["air_kerma_mgy_n"] == "2"
    assert row["lower_bound_studies"] == "1"
    html_rows = _html_tables(files.html)["summary"]
    assert html_rows[1][html_rows[0].index("lower_bound_studies")] == "1"


def test_a_study_with_a_run_of_unknown_time_is_a_lower_bound(db_url, tmp_path):
    """Its fluoroscopy time leaves that run out (``dose summary`` says so with ≥ and
    ``events_time_unknown``); the registry's report counted it as whole."""
    import pydicom

    from tests.dicom_fixtures import RunSpec, write_study

    write_study(tmp_path / "img" / "s0", [RunSpec(0.0, n_frames=3)])
    paths = write_study(tmp_path / "img" / "s1", [RunSpec(0.0, n_frames=3), RunSpec(20.0, n_frames=3)])
    ds = pydicom.dcmread(paths[1])
    for keyword in ("FrameTime", "FrameIncrementPointer", "FrameTimeVector"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.save_as(paths[1])
    ingest([tmp_path / "img"], db_url)
    files = write_report(db_url, tmp_path / "report")
    (row,) = list(csv.DictReader(open(files.csv["summary"])))
    assert row["studies"] == "2" and row["fluoro_time_s_n"] == "2"
    assert row["lower_bound_studies"] == "1"


def test_a_report_on_a_registry_that_does_not_exist_names_it(tmp_path, capsys):
    """Review s15 L11: a typo in --db made an empty registry and an empty report."""
    from sifluoro.cli import main

    assert main(["audit", "report", "--db", str(tmp_path / "typo.db"), "--out",
                 str(tmp_path / "report")]) == 2
    assert "typo.db: no registry there" in capsys.readouterr().err
    assert not (tmp_path / "typo.db").exists()


def test_a_reversed_date_range_is_refused_before_a_report_is_written(tmp_path, capsys):
    """User review s18 F15: --from after --to wrote an empty report and exited 2 unexplained."""
    from sifluoro.cli import main

    assert main(["audit", "report", "--db", str(tmp_path / "x.db"), "--out", str(tmp_path / "r"),
                 "--from", "2026-02-01", "--to", "2026-01-01"]) == 2
    assert "--from 2026-02-01 is after --to 2026-01-01" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_procedure_is_matched_as_the_device_writes_it(tmp_path):
    """``--procedure`` compared with ``==`` found nothing for "DSA Body" (stored as "Dsa body")
    nor "SIJ inj. left" (stored as "SI joint injection"); an empty answer named no label
    (review s16 M2)."""
    db = tmp_path / "r.db"
    engine = open_registry(f"sqlite:///{db}")
    insert_synthetic_studies(engine, 60, seed=4)
    with engine.begin() as conn:
        uids = [u for (u,) in conn.execute(select(StudyRow.study_instance_uid)
                                           .order_by(StudyRow.id).limit(2))]
        for uid, label in zip(uids, ("Dsa body", "Kardiologisk 7 5 b s")):
            conn.execute(StudyRow.__table__.update().where(StudyRow.study_instance_uid == uid)
                         .values(procedure=label, dose_source="report"))
        sij = conn.execute(select(func.count()).select_from(StudyRow)
                           .where(StudyRow.procedure == "SI joint injection")
                           .where(StudyRow.dose_source != "none")).scalar_one()
    assert sij > 0
    for text, studies in (("DSA Body", 1), ("dsa body", 1), ("Dsa body", 1),
                          ("Kardiologisk 7,5 b/s", 1), ("SIJ inj. left", sij),
                          ("si joint injection", sij)):
        files = write_report(engine, tmp_path / "rep", procedure=text)
        assert files.studies == studies, text
    engine.dispose()
    run = subprocess.run([sys.executable, "-m", "sifluoro", "audit", "report", "--db", str(db),
                          "--out", str(tmp_path / "none"), "--procedure", "Knee arthrography"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "no study has procedure 'Knee arthrography'" in run.stderr
    assert "Dsa body (1)" in run.stderr and "SI joint injection (" in run.stderr


def test_a_label_stored_before_l5_is_one_group_with_its_newer_form(tmp_path):
    """Labels keep "7,5" and "b/s" now (review s16 L5); a registry's older studies hold
    "Kardiologisk 7 5 b s": both are one group, named by the newer form."""
    engine = open_registry(f"sqlite:///{tmp_path / 'r.db'}")
    insert_synthetic_studies(engine, 60, seed=4)
    with engine.begin() as conn:
        uids = [u for (u,) in conn.execute(select(StudyRow.study_instance_uid)
                                           .where(StudyRow.dose_source != "none")
                                           .order_by(StudyRow.id).limit(4))]
        for uid, label in zip(uids, ["Kardiologisk 7 5 b s"] * 2 + ["Kardiologisk 7,5 b/s"] * 2):
            conn.execute(StudyRow.__table__.update().where(StudyRow.study_instance_uid == uid)
                         .values(procedure=label, device_id=1))
    files = write_report(engine, tmp_path / "rep", procedure="Kardiologisk 7,5 b/s")
    summary = _csv(files.csv["summary"])
    assert [(r[0], r[2]) for r in summary[1:]] == [("Kardiologisk 7,5 b/s", "4")]
    engine.dispose()


@pytest.mark.parametrize("selection", [["--procedure", "Knee arthrography"], ["--from", "2030-01-01"]])
def test_a_report_that_matches_no_study_writes_nothing(tmp_path, capsys, selection):
    """User review s19 U17: a report matching no study exited 2 but wrote an empty report
    (report.html, three CSVs of 0 studies)."""
    from sifluoro.cli import main

    engine = open_registry(f"sqlite:///{tmp_path / 'r.db'}")
    insert_synthetic_studies(engine, 20, seed=5)
    engine.dispose()
    assert main(["audit", "report", "--db", str(tmp_path / "r.db"), "--out", str(tmp_path / "rep"),
                 *selection]) == 2
    err = capsys.readouterr().err
    assert f"no study in the registry matches {selection[0]} " in err and "no report written" in err
    assert not (tmp_path / "rep").exists()


def test_a_group_whose_every_dap_is_unknown_is_charted_as_unknown_not_a_crash(tmp_path, capsys):
    """User review s20 H1: a procedure/device group with no known DAP (a device writing
    "Value unknown" for every event) crashed the report on its chart (ValueError: could not
    convert string to float: ''), leaving CSVs without report.html."""
    import warnings

    from sifluoro.cli import main

    engine = open_registry(f"sqlite:///{tmp_path / 'r.db'}")
    insert_synthetic_studies(engine, 40, seed=6)
    with engine.begin() as conn:
        conn.execute(StudyRow.__table__.update().values(dap_gycm2=None, air_kerma_mgy=None))
    engine.dispose()
    with warnings.catch_warnings():
        # nor matplotlib's "no artists" on the console (only that one: an unrelated warning,
        # a database connection of another test collected here, must not fail this test)
        warnings.filterwarnings("error", message="No artists with labels")
        assert main(["audit", "report", "--db", str(tmp_path / "r.db"), "--out",
                     str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    assert (tmp_path / "rep" / "dap_by_group.png").is_file()
