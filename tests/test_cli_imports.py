"""Building the command line imports no imaging, network or DICOM code: ``sifluoro --help``,
``dose summary`` and ``outbox send`` should not pay for numba and the pipeline (user review
F22: 1.7 s of imports for ``--help``)."""
import subprocess
import sys

HEAVY = ("numba", "pydicom", "pynetdicom", "cv2", "skimage", "sifluoro.pipeline",
         "sifluoro.engine", "sifluoro.acquire.receiver")


def _imported_after(code: str) -> set[str]:
    probe = (f"import sys\n{code}\n"
             f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    return set(filter(None, out.split(",")))


def test_the_command_line_is_built_without_heavy_imports():
    assert _imported_after("from sifluoro.cli import build_parser; build_parser()") == set()


def test_the_package_imports_the_engine_only_when_asked():
    assert _imported_after("import sifluoro") == set()
    assert "sifluoro.engine" in _imported_after("import sifluoro; sifluoro.Engine")
    import sifluoro

    assert {"Engine", "Settings"} <= set(dir(sifluoro))


def test_help_exits_cleanly():
    done = subprocess.run([sys.executable, "-m", "sifluoro", "--help"], capture_output=True,
                          text=True, check=True)
    assert "replay" in done.stdout and "receive" in done.stdout
    done = subprocess.run([sys.executable, "-m", "sifluoro.acquire.receiver", "--help"],
                          capture_output=True, text=True, check=True)
    assert "--ae-title" in done.stdout


def test_a_cold_kernel_cache_is_said_before_the_first_image_command(tmp_path, monkeypatch, capsys):
    """User review s19 U10: the first command after install was silent for ~20 s while numba
    compiled into the package's __pycache__."""
    from sifluoro import cli

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    (tmp_path / "register" / "__pycache__").mkdir(parents=True)
    assert not cli.kernels_cached(tmp_path)
    (tmp_path / "register" / "__pycache__" / "_kernels.best_path-40.py311.nbi").write_bytes(b"")
    assert cli.kernels_cached(tmp_path)
    monkeypatch.setattr(cli, "kernels_cached", lambda: False)
    cli.main(["replay", str(tmp_path / "none"), "--events", str(tmp_path / "e.jsonl"),
              "--summary", str(tmp_path / "s.json")])
    assert "first run: compiling the image kernels" in capsys.readouterr().err
    cli.main(["dose", "summary", str(tmp_path / "none")])
    assert "compiling" not in capsys.readouterr().err  # no image kernels there
