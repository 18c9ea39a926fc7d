"""No live frame pays for compilation: once the pipeline has prepared a run (warm-up on a frame
of its real size and dtype), processing the frames compiles no numba kernel. Run in a fresh
process, so that kernels compiled by other tests cannot hide a missing warm-up. Every other
frame is read-only, as a DICOM file's decoded pixels are (numba compiles a read-only array
apart; the simulator's and a video capture's frames are writable)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import importlib, json, pkgutil, sys
from numba.core.registry import CPUDispatcher
import sifluoro
from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline
from sifluoro.sim import simulate_case
from sifluoro.stages import STAGE_NAMES, make_stages
from sifluoro.track.needle_sim import sim_frames

frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True, size=int(sys.argv[2])))]
for f in frames[1::2]:
    f.pixels.flags.writeable = False
settings = Settings(latency_budget_ms=1e9, stage_threads=int(sys.argv[1]))
pipeline = Pipeline(make_stages(STAGE_NAMES, settings), settings)
state = pipeline.start_study("sim")
for run in {f.run.sop_instance_uid: f.run for f in frames}.values():
    pipeline.prepare_run(run, state)

def dispatchers():
    out = {}
    for info in pkgutil.walk_packages(sifluoro.__path__, "sifluoro."):
        if ".sim" in info.name or info.name.endswith("__main__"):
            continue  # the simulator made the frames above
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == info.name:
                out[f"{info.name}.{name}"] = obj
    return out

before = {k: len(d.signatures) for k, d in dispatchers().items()}
events = [pipeline.process(f, state) for f in frames]
after = {k: len(d.signatures) for k, d in dispatchers().items()}
print(json.dumps({"kernels": len(before), "used": sum(1 for k in before if before[k]),
                  "compiled_on_frames": sorted(k for k in after if after[k] != before.get(k, 0)),
                  "needles": sum(1 for e in events if e["needle"])}))
"""


def _run(threads: int, size: int = 512) -> dict:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(size)], capture_output=True,
                         text=True, check=True, cwd=root, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_processing_frames_after_the_warm_up_compiles_nothing():
    got = _run(1)
    assert got["kernels"] >= 20 and got["used"] >= 20  # the stages' kernels were found and warmed
    assert got["needles"] > 0  # the needle stage went past its cold start
    assert got["compiled_on_frames"] == []


def test_1024_frames_compile_nothing_either():
    """At 1024² the register stage makes its working image from the stored pixels, so the
    needle followed in its box converts its crop of the pixels itself (a view, not C-ordered):
    that kernel's signature is warmed too."""
    got = _run(1, 1024)
    assert got["needles"] > 0
    assert got["compiled_on_frames"] == []


LOADED = r"""
import importlib, json, pkgutil, sys
from numba.core.registry import CPUDispatcher
import sifluoro
from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline
from sifluoro.sim import simulate_case
from sifluoro.stages import STAGE_NAMES, make_stages
from sifluoro.track.needle_sim import sim_frames

frames = [f for f, _ in sim_frames(simulate_case(2026, 1, quick=True, size=1024))]
settings = Settings(latency_budget_ms=1e9)
pipeline = Pipeline(make_stages(STAGE_NAMES, settings), settings)

def signatures():
    out = {}
    for info in pkgutil.walk_packages(sifluoro.__path__, "sifluoro."):
        if ".sim" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == info.name:
                out[f"{info.name}.{name}"] = len(obj.signatures)
    return out

pipeline.load_kernels()
loaded = signatures()
state = pipeline.start_study("sim")
for run in {f.run.sop_instance_uid: f.run for f in frames}.values():
    pipeline.prepare_run(run, state)
print(json.dumps({"loaded": sum(1 for v in loaded.values() if v),
                  "compiled_after": sorted(k for k, v in signatures().items() if v != loaded.get(k, 0))}))
"""


def test_the_kernels_loaded_before_a_source_opens_leave_its_size_nothing_to_compile():
    """A live video source is not read while its frame size is warmed (its pulses lost): the
    kernels load before it opens (``Pipeline.load_kernels``, on a 64x64 frame), so the warm-up
    for the source's real size (1024²) compiles or loads none."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True,
                         check=True, cwd=root, timeout=600)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] >= 20
    assert got["compiled_after"] == []
