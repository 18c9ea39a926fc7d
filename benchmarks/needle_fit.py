"""Fit the needle stage's candidate model (``_LOGIT_WEIGHTS``, ``_LOGIT_BIAS`` in
:mod:`sifluoro.track.needle`) on simulated training studies.

    .venv/bin/sifluoro simulate /work/scratch/needle-train --cases 16 --seed 777
    .venv/bin/python -m benchmarks.needle_fit /work/scratch/needle-train [more dirs] [--l2 1.0]

Never fit on an evaluation set (``/work/evalset*``): the script refuses. Every frame of every
case runs through the stage (no deadline); every candidate segment it scores is labelled
against the truth: positive when its tip is within 3 mm of the visible (not end-on) tip,
negative on a frame without a needle or when it lies off the needle (tip more than 3 mm from
the truth shaft); a candidate on the needle's line with a misplaced tip is left out (it is the
needle, but its tip is not). The model is an L2-regularised logistic regression on
:func:`sifluoro.track.needle.candidate_vector` fitted by IRLS (features standardised for the
fit, the weights printed in the raw units to paste into ``needle.py``), with the training
AUC and the positive/negative rates at a few thresholds.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from sifluoro.acquire.dicom_reader import iter_frames, read_study
from sifluoro.config import Settings
from sifluoro.pipeline import Pipeline
from sifluoro.track import needle as N
from sifluoro.track.needle import NeedleStage, candidate_vector

from benchmarks.needle_trace import shaft_distance_px


def collect(cases_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Candidate vectors and labels (1 needle, 0 not) of every case under ``cases_dir``."""
    xs, ys, where = [], [], []
    for truth_path in sorted(cases_dir.glob("*/truth.json")):
        truth = json.loads(truth_path.read_text())
        by_frame = {(f["sop_instance_uid"], f["frame"]): f for f in truth["frames"]}
        study = read_study([truth_path.parent / "dicom"])
        stage = NeedleStage()
        pipe = Pipeline([stage], Settings(latency_budget_ms=1e9))
        state = pipe.start_study(study.study_instance_uid)
        for frame in iter_frames(study, []):
            pipe.process(frame, state)
            t = by_frame[(frame.sop_instance_uid, frame.frame_number)]
            st = state.stage_state["needle"]
            spacing = t["pixel_spacing_mm"]
            for f in st.last_features:
                tip = st.ctx.grid.to_full(f["tip"])
                if t["tip_xy"] is not None and not t["end_on"]:
                    err = math.dist(tip, t["tip_xy"]) * spacing
                    if err <= 3.0:
                        label = 1
                    elif shaft_distance_px(tip, t["shaft_xy"]) * spacing > 3.0:
                        label = 0
                    else:
                        continue
                elif not t["needle_visible"]:
                    label = 0
                else:
                    continue
                xs.append(candidate_vector(f))
                ys.append(label)
                where.append(f"{truth_path.parent.name}#{frame.index}")
    return np.array(xs), np.array(ys, float), where


def fit_logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, iters: int = 50
                 ) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by IRLS (Newton); the bias is not penalised.
    Features are standardised for the fit; the returned weights and bias are in raw units."""
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-9] = 1.0
    z = np.hstack([(x - mu) / sd, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    pen = np.full(z.shape[1], l2)
    pen[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        grad = z.T @ (p - y) + pen * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(pen)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    weights = w[:-1] / sd
    bias = float(w[-1] - (w[:-1] * mu / sd).sum())
    return weights, bias


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic)."""
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = y == 1
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / max(n1 * n0, 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--l2", type=float, default=1.0)
    args = ap.parse_args(argv)
    for d in args.dirs:
        if "evalset" in str(d.resolve()):
            ap.error(f"{d} is an evaluation set: fit on simulated training studies only")
    parts = [collect(d) for d in args.dirs]
    x = np.vstack([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    w, b = fit_logistic(x, y, l2=args.l2)
    print(f"candidates {len(y)}: {int(y.sum())} needle, {int((1 - y).sum())} not")
    for name, (ww, bb) in (("model in needle.py", (N._LOGIT_WEIGHTS, N._LOGIT_BIAS)),
                           ("fitted", (w, b))):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ ww + bb, -50, 50)))
        print(f"{name}: AUC {auc(p, y):.4f}")
        for thr in (0.2, 0.5, 0.7, 0.9, 0.95):
            print(f"  p >= {thr}: needle {np.mean(p[y == 1] >= thr):.3f}, "
                  f"not needle {np.mean(p[y == 0] >= thr):.3f}")
    print("_LOGIT_WEIGHTS = np.array([" + ", ".join(f"{v:.3f}" for v in w) + "])")
    print(f"_LOGIT_BIAS = {b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
