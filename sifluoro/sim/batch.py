"""Many simulated studies: write a set, replay a set (serially or on a process pool)."""
from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator


def _size_for(size: str, case: int) -> int:
    return int(size) if size != "mixed" else (512 if case % 3 else 1024)


def _one(args) -> str:
    outdir, seed, case, size, quick, wrong_level, tight = args
    from sifluoro.sim import simulate_case
    from sifluoro.sim.export import export_study

    study = simulate_case(seed, case, size=size, quick=quick, wrong_level_scout=wrong_level,
                          tight_collimation=tight)
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
                 wrong_level_scouts: bool = False,
                 tight_collimation: bool = False) -> Iterator[str]:
    """Write cases ``first_case .. first_case+cases-1``; yields one line per case, in order
    (``wrong_level_scouts``, ``tight_collimation``: see :func:`sifluoro.sim.simulate_case`).
    With ``workers`` above 1 the cases run in spawned processes, which import the calling
    script again: a script that calls this must do so under ``if __name__ == "__main__":``."""
    jobs = [(str(outdir), seed, c, _size_for(size, c), quick, wrong_level_scouts,
             tight_collimation)
            for c in range(first_case, first_case + cases)]
    if workers <= 1:
        yield from map(_one, jobs)
        return
    # spawned, not forked: a process that has run the parallel kernels has GNU OpenMP threads,
    # and a child forked from it is killed at once ("fork() called from a process already
    # using GNU OpenMP")
    with ProcessPoolExecutor(max_workers=workers,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(_one, jobs)


def rederive_joint_truth(src_case: str | Path, dst_case: str | Path, *, quick: bool = False,
                         wrong_level_scout: bool = False) -> tuple[int, int]:
    """Write ``dst_case/truth.json``: ``src_case``'s truth with each frame's ``joint_doubled``
    computed again by the current simulator (no pixel rendered); ``dst_case/dicom`` links to
    ``src_case``'s DICOM. ``quick`` and ``wrong_level_scout`` must be those the case was made
    with. Returns (frames whose doubled truth changed, frames)."""
    from sifluoro.sim.export import TRUTH_VERSION
    from sifluoro.sim.study import case_joints

    src_case, dst_case = Path(src_case).resolve(), Path(dst_case)
    truth = json.loads((src_case / "truth.json").read_text())
    joints = case_joints(truth["seed"], truth["case"], size=truth["size"], quick=quick,
                         wrong_level_scout=wrong_level_scout)
    poses = [(r["technique"]["primary_angle_deg"], r["technique"]["secondary_angle_deg"])
             for r in truth["runs"]]
    if [pose for pose, _ in joints] != poses:
        raise ValueError(f"{src_case}: its runs are not those of seed {truth['seed']} case "
                         f"{truth['case']} (quick={quick}, wrong_level_scout={wrong_level_scout})")
    doubled = {r["sop_instance_uid"]: jp.doubled for r, (_, jp) in zip(truth["runs"], joints)}
    changed = 0
    for ft in truth["frames"]:
        new = doubled[ft["sop_instance_uid"]]
        changed += new != ft["joint_doubled"]
        ft["joint_doubled"] = new
    truth["version"] = TRUTH_VERSION
    dst_case.mkdir(parents=True, exist_ok=True)
    (dst_case / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    link = dst_case / "dicom"
    if not link.exists():
        link.symlink_to(src_case / "dicom", target_is_directory=True)
    return changed, len(truth["frames"])


def rederive_set(src: str | Path, dst: str | Path, *, quick: bool = False,
                 wrong_level_scouts: bool = False) -> Iterator[str]:
    """:func:`rederive_joint_truth` for each case of a stored set; yields one line per case."""
    for case_dir in sorted(p for p in Path(src).iterdir() if (p / "truth.json").exists()):
        changed, n = rederive_joint_truth(case_dir, Path(dst) / case_dir.name, quick=quick,
                                          wrong_level_scout=wrong_level_scouts)
        yield f"{case_dir.name}: joint_doubled changed on {changed} of {n} frames"


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
