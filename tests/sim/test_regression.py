"""Frozen truth of one seeded 512 case: any silent change of the simulator shows up here.

If a change is intended, regenerate these numbers and say why in the commit message.
"""
import numpy as np

from sifluoro.sim import _kernels as K
from sifluoro.sim import contrast as con
from sifluoro.sim.metrics import fwhm_px, line_cnr

EXPECTED_SUMMARY = ('L', 'vascular', [5, 4, 10, 5, 3, 6, 18])
EXPECTED_TECHNIQUE = [(77.0, 18.3, 10.9, 0.0), (77.0, 18.8, 9.0, -15.5), (77.0, 18.8, 9.0, -15.5),
                      (77.0, 18.3, 10.0, -27.5), (77.0, 18.8, 9.0, -15.5),
                      (77.0, 18.8, 9.0, -15.5), (77.0, 15.4, 11.0, -15.5)]
EXPECTED_POINTS = [(224.02495933425047, 329.2854503220415), (238.657335104325, 299.6291398171868),
                   (256.00882498633297, 265.3385432339893), (257.73561966025403, 259.62806706129095),
                   (265.1348130784173, 265.4151790103717)]
EXPECTED_STATES = ['none', 'none', 'none', 'none', 'none', 'none', 'vascular']


def test_frozen_case(study):
    r = study.runs
    assert (study.side, study.outcome, [len(x.frames) for x in r]) == EXPECTED_SUMMARY
    tech = [(x.technique.kvp, x.technique.tube_current_ma, x.technique.pulse_width_ms,
             x.technique.primary_angle_deg) for x in r]
    np.testing.assert_allclose(np.array(tech), np.array(EXPECTED_TECHNIQUE), atol=1e-6)
    pts = [r[1].truth[0].tip_xy, r[2].truth[-1].tip_xy, r[6].truth[-1].tip_xy,
           r[6].truth[-1].target_xy, r[3].truth[0].target_xy]
    np.testing.assert_allclose(np.array(pts), np.array(EXPECTED_POINTS), atol=1e-6)
    assert [x.truth[-1].contrast_state for x in r] == EXPECTED_STATES


def test_image_quality_within_documented_ranges(study):
    """Ranges stated in docs/simulator.md (section 'Measured image quality')."""
    aligned = study.runs[3]                      # view-change run that opens the joint
    assert not aligned.truth[0].joint_doubled
    assert 1.5 <= line_cnr(aligned, 1, "joint") <= 20.0
    doubled = study.runs[1]
    assert doubled.truth[0].joint_doubled
    assert line_cnr(doubled, 1, "joint") < line_cnr(aligned, 1, "joint")
    for run in study.runs[1:3]:
        assert 1.5 <= line_cnr(run, 1, "needle") <= 20.0


def test_vessel_width_mm(scene):
    an, cam, static, mk, alpha = scene
    plan = con.plan_contrast(np.random.default_rng(1), ("vascular",), an,
                             an.joint_point(0.0, 0.0), 16)
    w = np.ones_like(plan.vessel_radius_mm)
    out = np.zeros((512, 512), np.float32)
    K.render_tubes(out, cam.vector, plan.vessel_seg_a, plan.vessel_seg_b, plan.vessel_radius_mm,
                   np.zeros_like(w), w, 4)
    widths = []
    for a, b, r in zip(plan.vessel_seg_a, plan.vessel_seg_b, plan.vessel_radius_mm):
        pa, pb = cam.project(np.array([a, b]))
        d = pb - pa
        if np.linalg.norm(d) * cam.pixel_spacing_mm < 1.5:
            continue                              # nearly end-on segment
        n = np.array([-d[1], d[0]]) / np.linalg.norm(d)
        mag = float(cam.magnification((a + b) / 2))
        widths.append(fwhm_px(out, (pa + pb) / 2, n) * cam.pixel_spacing_mm / mag)
    med = float(np.median(widths))
    assert 0.7 <= med <= 2.2          # vessels of 1-2 mm calibre (FWHM of a cylinder ~0.87 d)
