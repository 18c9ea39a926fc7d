"""Many simulated studies: write a set, replay a set (serially or on a process pool)."""
from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator


def _size_for(size: str, case: int) -> int:
    return int(size) if size != "mixed" else (512 if case % 3 else 1024)


def _one(args) -> str:
    outdir, seed, case, size, quick, wrong_level = args
    from sifluoro.sim import simulate_case
    from sifluoro.sim.export import export_study

    study = simulate_case(seed, case, size=size, quick=quick, wrong_level_scout=wrong_level)
    exported = export_study(study, Path(outdir) / f"case{case:03d}")
    frames = sum(len(r.frames) for r in study.runs)
    # the truth says whether a file was damaged (a study may draw damage and have no run for it)
    damaged = json.loads((exported.folder / "truth.json").read_text())["damaged_files"]
    return (f"case{case:03d}: {size}² {study.storage}/{study.compression or 'uncompressed'} "
            f"{study.runs[0].technique.detector}, {len(study.runs)} runs, {frames} frames, "
            f"outcome {study.outcome}{', damaged file' if damaged else ''}"
            f" -> {exported.folder}")


def simulate_set(outdir: str | Path, *, cases: int, seed: int, size: str = "mixed",
                 first_case: int = 0, workers: int = 2, quick: bool = False,
                 wrong_level_scouts: bool = False) -> Iterator[str]:
    """Write cases ``first_case .. first_case+cases-1``; yields one line per case, in order
    (``wrong_level_scouts``: see :func:`sifluoro.sim.simulate_case`)."""
    jobs = [(str(outdir), seed, c, _size_for(size, c), quick, wrong_level_scouts)
            for c in range(first_case, first_case + cases)]
    if workers <= 1:
        yield from map(_one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_one, jobs)


def replay_set(cases_dir: str | Path, out: str | Path, *, settings=None):
    """Replay each ``CASES/<case>/`` into ``OUT/<case>/events.jsonl`` and ``summary.json``.

    With the default latency budget, image stages may be skipped on a busy machine; no
    deadline (``Settings(latency_budget_ms=math.inf)``) makes the results independent of load
    (and overlaps consecutive frames: :meth:`~sifluoro.pipeline.Pipeline.process_frames`).
    """
    from sifluoro.replay import replay

    for case_dir in sorted(p for p in Path(cases_dir).iterdir() if (p / "truth.json").exists()):
        result = replay([case_dir / "dicom"], events_path=Path(out) / case_dir.name / "events.jsonl",
                        summary_path=Path(out) / case_dir.name / "summary.json", settings=settings)
        yield case_dir.name, result
