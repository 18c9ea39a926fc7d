"""Physics simulator of fluoroscopy-guided SI-joint injections (the project's ground truth).

``simulate_case(seed, case)`` returns a :class:`SimStudy` of stored frames with per-frame truth.
"""
from sifluoro.sim._kernels import warm_up
from sifluoro.sim.records import FrameTruth, SimRun, SimStudy, SimTechnique
from sifluoro.sim.study import simulate_case

__all__ = ["simulate_case", "SimStudy", "SimRun", "FrameTruth", "SimTechnique", "warm_up"]
