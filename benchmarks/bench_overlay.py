"""Cost of drawing one overlay frame (display windowing + joint, target, needle, contrast, text)."""
from __future__ import annotations

import json
import time

import numpy as np

from sifluoro.overlay import draw_overlay


def _event(size: int) -> dict:
    ys = np.linspace(size * 0.3, size * 0.7, 40)
    return {"index": 10, "t_s": 3.2,
            "needle": {"tip_xy": [size * 0.55, size * 0.6], "confidence": 0.9, "direction_xy": [0.6, 0.8]},
            "joint": {"polyline_xy": [[size * 0.5 + 10 * np.sin(y / 40), y] for y in ys], "doubled": True},
            "target": {"xy": [size * 0.5, size * 0.63], "radius_mm": 5.0}, "tip_to_target_mm": 4.2,
            "contrast": {"state": "intra_articular", "confidence": 0.8,
                         "bbox_xyxy": [size * 0.4, size * 0.5, size * 0.6, size * 0.7]},
            "dose": {"air_kerma_mgy": 12.3, "dap_gycm2": 1.23, "fluoro_time_s": 45.6},
            "alerts": [{"kind": "fluoro_time", "message": "fluoroscopy time has reached 5 min"}]}


def run(quick: bool = False) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for size in (512, 1024):
        pixels = rng.integers(1000, 3000, (size, size), dtype=np.uint16)
        event = _event(size)
        # as OverlayWriter draws: into one reused image
        image = np.empty((size, size, 3), np.uint8)
        draw_overlay(pixels, "MONOCHROME2", event, spacing_mm=0.3, out=image)  # OpenCV set-up
        times = []
        for _ in range(30 if quick else 200):
            t0 = time.perf_counter()
            draw_overlay(pixels, "MONOCHROME2", event, spacing_mm=0.3, out=image)
            times.append((time.perf_counter() - t0) * 1000.0)
        p50, p99 = np.percentile(times, [50, 99])
        out[f"{size}"] = {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}
    return out


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
