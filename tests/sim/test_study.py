"""Study-level behaviour: determinism, API contract, storage, truth consistency, physics."""
import numpy as np
import pytest

from sifluoro.sim import FrameTruth, SimRun, SimStudy, SimTechnique, simulate_case
from sifluoro.sim import _kernels as K
from sifluoro.sim import anatomy as anat
from sifluoro.sim import contrast as con
from sifluoro.sim import detector as det
from sifluoro.sim.needle import NeedlePlan, tube_arrays
from sifluoro.sim.spectra import beam_model


def test_determinism_and_case_dependence(study):
    again = simulate_case(7, 2)
    assert len(again.runs) == len(study.runs)
    for a, b in zip(study.runs, again.runs):
        np.testing.assert_array_equal(a.frames, b.frames)
        assert a.truth == b.truth
        assert a.technique == b.technique
    other = simulate_case(7, 3)
    assert (len(other.runs) != len(study.runs)
            or not np.array_equal(other.runs[0].frames, study.runs[0].frames))


def test_contract(study):
    assert isinstance(study, SimStudy)
    assert study.side in ("L", "R")
    assert study.outcome in ("intra_articular", "extravasation", "vascular", "none")
    assert study.modality in ("XA", "RF")
    assert study.storage in ("xa", "rf", "enhanced_xa")
    assert study.compression in (None, "rle", "jpeg2000")
    n = sum(len(r.frames) for r in study.runs)
    assert 6 <= len(study.runs) <= 10 and 25 <= n <= 100
    assert study.runs[0].truth[0].tip_xy is None          # scout without needle
    prev_end = None
    for run in study.runs:
        assert isinstance(run, SimRun) and isinstance(run.technique, SimTechnique)
        t = run.technique
        assert run.frames.dtype == np.uint16 and run.frames.shape[1:] == (512, 512)
        assert len(run.truth) == len(run.frames)
        assert all(isinstance(x, FrameTruth) for x in run.truth)
        assert 10 <= run.bits_stored <= 16
        assert int(run.frames.max()) < 2 ** run.bits_stored
        assert t.frame_time_ms == 1000.0 / t.pulse_rate_per_s
        assert t.imager_pixel_spacing_mm == t.field_of_view_mm / 512
        assert 65 <= t.kvp <= 95 and 900 <= t.sid_mm <= 1200
        assert t.source_to_patient_mm < t.source_to_isocenter_mm < t.sid_mm
        assert prev_end is None or run.start_s >= prev_end + 5.0 - 1e-9
        prev_end = run.start_s + len(run.frames) * t.frame_time_ms / 1000.0


def test_shutters_blank_and_polarity(study):
    for run in study.runs:
        top = 2 ** run.bits_stored - 1
        # unexposed = maximal attenuation, stored by the run's PixelIntensityRelationshipSign
        blank = top if run.attenuation_rises_with_value else 0
        outside = ~run.exposed_mask
        outside[:140, :] = False          # burned-in text lives in the top band
        outside[:, :0] = False
        if outside.any():
            assert np.all(run.frames[:, outside] == blank)


def test_to_stored_polarity_and_bits():
    rng = np.random.default_rng(0)
    disp = rng.normal(0, 1, (64, 64)).astype(np.float32)
    mask = np.ones((64, 64), bool)
    mask[:5] = False
    win = det.window(disp, mask)
    for bits in (10, 12, 14, 16):
        m2 = det.to_stored(disp, win, bits, -1, mask)   # values rise with attenuation
        m1 = det.to_stored(disp, win, bits, 1, mask)    # values rise with X-ray intensity
        assert m2.max() <= 2 ** bits - 1
        np.testing.assert_array_equal(m1.astype(int), (2 ** bits - 1) - m2.astype(int))
        # attenuation-like: larger display value -> larger sign -1 value
        i, j = np.unravel_index(np.argmax(disp[5:]), disp[5:].shape)
        assert m2[5 + i, j] >= np.percentile(m2[5:], 99)


def _contrast(kvp, cu):
    b = beam_model(kvp, 12.0, 3.0, cu)
    out = np.empty((1, 3), np.float32)
    water = np.array([[200.0, 180.0, 200.0]], np.float32)
    bone = np.array([[0.0, 20.0, 0.0]], np.float32)
    iodine = np.array([[0.0, 0.0, 0.2]], np.float32)
    K.polychromatic(out, water, bone, iodine, np.zeros_like(water), b.weights, b.mu_water,
                    b.mu_bone, b.mu_iodine, b.mu_steel)
    return np.log(out[0, 0] / out[0, 1]), np.log(out[0, 0] / out[0, 2])


def test_kvp_and_filtration_change_contrast():
    bone_lo, iod_lo = _contrast(70, 0.1)
    bone_hi, iod_hi = _contrast(90, 0.3)
    # harder beam: lower bone-to-soft-tissue and iodine contrast
    assert bone_lo > 1.15 * bone_hi
    assert iod_lo > 1.15 * iod_hi


def test_needle_tip_truth_matches_render(scene):
    an, cam, static, mk, alpha = scene
    tip = an.joint_point(0.0, 1.0)
    d = cam.beam + 0.45 * np.cross(cam.beam, [0.0, 0.0, 1.0])
    plan = NeedlePlan(final_tip_mm=tip, direction=d / np.linalg.norm(d),
                      bend_dir=np.array([0.0, 0.0, 1.0]), bend_mm=1.5, length_mm=89.0,
                      final_depth_mm=70.0, gauge=22)
    pl = plan.polyline(60.0)
    steel = np.zeros((512, 512), np.float32)
    K.render_tubes(steel, cam.vector, *tube_arrays([pl], [plan.radii_mm[0]],
                                                   [plan.radii_mm[1]], [1.0]), 4)
    xy = cam.project(pl)
    tip_xy = xy[-1]
    axis = (xy[-1] - xy[-3]) / np.linalg.norm(xy[-1] - xy[-3])
    # profile along the shaft axis through the tip: half of the plateau is reached at the tip
    s = np.linspace(-8.0, 4.0, 1201)
    pts = tip_xy[None] + s[:, None] * axis[None]
    from scipy.ndimage import map_coordinates
    prof = map_coordinates(steel, [pts[:, 1], pts[:, 0]], order=1)
    plateau = prof[s < -4].mean()
    end = s[np.nonzero(prof > 0.5 * plateau)[0][-1]]
    assert abs(end) < 0.5


def test_joint_line_is_a_lucency_on_noise_free_render(scene):
    an, cam, static, mk, alpha = scene
    jp = anat.project_joint(an, cam, resolution_mm=anat.resolution_mm(cam.pixel_spacing_mm, 0.4))
    assert not jp.doubled
    poly = jp.polyline_xy
    tang = np.gradient(poly, axis=0)
    normal = np.stack([-tang[:, 1], tang[:, 0]], 1) / np.linalg.norm(tang, axis=1)[:, None]
    from scipy.ndimage import map_coordinates

    def at(offset):
        p = poly + offset * normal
        return map_coordinates(static.bone_mm, [p[:, 1], p[:, 0]], order=1)

    centre = at(0.0)
    sides = np.maximum(at(-4.0), at(4.0))
    assert np.mean(centre < sides) > 0.8
    # off by 10 degrees: doubled
    assert anat.project_joint(an, mk(alpha + 10.0, 5.0), resolution_mm=1.2).doubled


def test_doubled_only_where_the_margins_project_resolvably_apart(scene):
    """5 degrees off, most heights have no tangent beam, but the margins project ~2.5 mm
    apart, less than the gap's projected width (1.6 mm) plus the detector's resolution
    (1.2 mm): one line. 10 degrees off they are ~5.4 mm apart: two lines."""
    an, cam, static, mk, alpha = scene
    r = anat.resolution_mm(cam.pixel_spacing_mm, 0.4)
    near, far = mk(alpha + 5.0, 5.0), mk(alpha + 10.0, 5.0)
    a = an.params
    zs = np.linspace(a[K.A_ZSUP], a[K.A_ZINF], 161)
    threshold = a[K.A_W0] * float(near.magnification(an.joint_point(0.0, 0.0))) + r
    assert 1.5 < np.median(anat._margin_separation_mm(an, near, zs)) < threshold
    assert np.median(anat._margin_separation_mm(an, far, zs)) > threshold + 1.5
    # with no limit to resolution (the tangent rule alone) the near view would count
    assert anat.project_joint(an, near, resolution_mm=-np.inf).doubled
    assert not anat.project_joint(an, near, resolution_mm=r).doubled
    assert anat.project_joint(an, far, resolution_mm=r).doubled
    # the line itself does not depend on the rule
    np.testing.assert_array_equal(anat.project_joint(an, near, resolution_mm=r).polyline_xy,
                                  anat.project_joint(an, near, resolution_mm=0.0).polyline_xy)


def test_resolution_is_the_blur_fwhm_but_no_less_than_two_pixels():
    assert anat.resolution_mm(0.2, 0.5) == pytest.approx(2.3548 * 0.5, rel=1e-4)
    assert anat.resolution_mm(0.78, 0.3) == pytest.approx(1.56)


def test_margin_separation_is_across_the_line():
    """A camera looking along z at a flat joint: margins at x = +-DH*tan project apart by
    exactly 2*DH*tan*M across the line, whatever the line's direction on the detector."""
    from sifluoro.sim.geometry import make_camera
    an = anat.sample_anatomy(np.random.default_rng(3), "L")
    p = an.params.copy()
    for k in (K.A_KAPPA, K.A_TILT, K.A_AMP_C, K.A_AMP_S, K.A_WAVE):
        p[k] = 0.0
    flat = anat.Anatomy(p, an.tex_fine, an.tex_coarse, an.body, an.side)
    cam = make_camera(flat.joint_point(0.0, 0.0), 0.0, 0.0, 1000.0, 700.0, 300.0, 512)
    zs = np.linspace(p[K.A_ZSUP], p[K.A_ZINF], 11)
    sep = anat._margin_separation_mm(flat, cam, zs)
    ant, post = flat.joint_point(-p[K.A_DH], 0.0), flat.joint_point(p[K.A_DH], 0.0)
    xy = cam.project(np.array([ant, post]))
    want = abs(xy[1, 0] - xy[0, 0]) * cam.pixel_spacing_mm
    np.testing.assert_allclose(sep, want, rtol=1e-6)
    assert want > 2.0 * p[K.A_DH] * p[K.A_TAN]     # magnified


def test_end_on_needle_is_a_dot(scene):
    an, cam, static, mk, alpha = scene
    tip = an.joint_point(0.0, 0.0)
    plan = NeedlePlan(final_tip_mm=tip, direction=cam.beam.copy(),
                      bend_dir=np.array([1.0, 0.0, 0.0]), bend_mm=0.0, length_mm=89.0,
                      final_depth_mm=70.0, gauge=22)
    pl = plan.polyline(70.0)
    xy = cam.project(pl)
    assert np.linalg.norm(xy[0] - xy[-1]) * cam.pixel_spacing_mm < 3.0
    steel = np.zeros((512, 512), np.float32)
    K.render_tubes(steel, cam.vector, *tube_arrays([pl], [0.36], [0.2], [1.0]), 3)
    ys, xs = np.nonzero(steel > 1.0)
    assert xs.size and np.ptp(xs) <= 6 and np.ptp(ys) <= 6
    assert steel.max() > 20.0       # tens of mm of steel along the beam: a dense dot


@pytest.mark.parametrize("off_beam_deg, bend_mm, end_on", [(0.0, 0.0, True), (0.0, 3.0, True),
                                                           (8.0, 0.0, False), (8.0, 3.0, False)])
def test_truth_calls_a_needle_along_the_beam_end_on_even_when_bent(scene, off_beam_deg, bend_mm, end_on):
    from sifluoro.sim.study import _needle_truth, _rotate

    an, cam, static, mk, alpha = scene
    direction = _rotate(cam.beam.copy(), np.array([1.0, 0.0, 0.0]), np.radians(off_beam_deg))
    plan = NeedlePlan(final_tip_mm=an.joint_point(0.0, 0.0), direction=direction,
                      bend_dir=np.array([0.0, 1.0, 0.0]), bend_mm=bend_mm, length_mm=89.0,
                      final_depth_mm=70.0, gauge=22)
    mask = np.ones((512, 512), bool)
    tip_xy, shaft, visible, got = _needle_truth(cam, plan.polyline(70.0), mask)
    assert visible and tip_xy is not None and got is end_on


def _plan(scene, components, seed=0):
    an, cam, static, mk, alpha = scene
    tip = an.joint_point(0.0, 0.0)
    return con.plan_contrast(np.random.default_rng(seed), components, an, tip, 16)


def test_vascular_washes_out_and_joint_fill_persists(scene):
    an, cam, static, mk, alpha = scene
    out = np.zeros((512, 512), np.float32)
    for seed in range(3):
        plan = _plan(scene, ("intra_articular", "vascular"), seed)
        vas = []
        ia = []
        for f in range(16):
            pk = con.iodine_map(plan, f, cam, static, out)
            vas.append(pk.get("vascular", 0.0))
            ia.append(pk.get("intra_articular", 0.0))
        vas = np.array(vas)
        first = int(np.argmax(vas > con.VISIBLE_MG_MM2))
        assert vas[first] > con.VISIBLE_MG_MM2
        gone = np.nonzero(vas[first:] < con.VISIBLE_MG_MM2)[0]
        assert gone.size and gone[0] <= 6
        assert ia[-1] > 5 * con.VISIBLE_MG_MM2 and ia[-1] >= 0.9 * max(ia)


def test_quick_case_is_the_end_of_the_same_study(study):
    quick = simulate_case(7, 2, quick=True)
    assert (quick.side, quick.outcome, quick.needle_gauge) == (study.side, study.outcome,
                                                               study.needle_gauge)
    assert quick.patient_thickness_mm == study.patient_thickness_mm
    assert 1 <= len(quick.runs) <= 2
    poses = {(r.technique.primary_angle_deg, r.technique.secondary_angle_deg) for r in quick.runs}
    work = (study.runs[-1].technique.primary_angle_deg, study.runs[-1].technique.secondary_angle_deg)
    assert poses == {work}
    assert len(quick.runs[0].frames) <= 8 and all(t.tip_xy is not None or not t.needle_visible
                                                  for t in quick.runs[0].truth)
    if study.outcome != "none":
        assert quick.runs[-1].truth[-1].contrast_state == study.runs[-1].truth[-1].contrast_state
    assert quick.runs[0].truth[-1].contrast_state == "none"


def test_spectra_cached_on_disk_are_spekpys(tmp_path, monkeypatch):
    import spekpy

    from sifluoro.sim import spectra

    monkeypatch.setenv("SIFLUORO_CACHE", str(tmp_path))
    spectra._raw_spectrum.cache_clear()
    try:
        e1, f1 = spectra._raw_spectrum(77, 12.0)            # computed, then written
        files = list(spectra.spectrum_cache_dir().glob("*.npz"))
        assert [p.name for p in files] == ["kvp77_th12.npz"]
        spectra._raw_spectrum.cache_clear()
        e2, f2 = spectra._raw_spectrum(77, 12.0)            # read back
        e3, f3 = spekpy.Spek(kvp=77.0, th=12.0).get_spectrum()
        np.testing.assert_array_equal(e2, e3)
        np.testing.assert_array_equal(f2, f3)
        np.testing.assert_array_equal(f1, f2)
    finally:
        spectra._raw_spectrum.cache_clear()


def test_wrong_level_scout_shows_no_joint_and_leaves_the_study_unchanged(study):
    with_scout = simulate_case(7, 2, wrong_level_scout=True)
    wrong, rest = with_scout.runs[0], with_scout.runs[1:]
    assert len(rest) == len(study.runs)
    for a, b in zip(rest, study.runs):
        np.testing.assert_array_equal(a.frames, b.frames)
        assert a.start_s == b.start_s and a.truth == b.truth
    assert 3 <= len(wrong.frames) <= 6
    assert wrong.start_s + len(wrong.frames) * wrong.technique.frame_time_ms / 1000.0 < 0.0
    assert all(t.joint_polyline_xy is None and t.target_xy is None and not t.needle_visible
               for t in wrong.truth)
    # same C-arm angles as the study's scout: only the image tells that the table moved
    t0, t1 = wrong.technique, study.runs[0].technique
    assert (t0.primary_angle_deg, t0.secondary_angle_deg) == (t1.primary_angle_deg,
                                                              t1.secondary_angle_deg)
    assert np.abs(wrong.frames[0].astype(float) - study.runs[0].frames[0]).mean() > 100
    assert wrong.wrong_level and not any(r.wrong_level for r in rest)
    # a damaged case has the same run's file cut short with or without the wrong level
    from dataclasses import replace

    from sifluoro.sim.export import _damaged_run_index
    assert _damaged_run_index(replace(with_scout, damaged=True)) == \
        _damaged_run_index(replace(study, damaged=True)) + 1


def test_the_vessels_iodine_comes_apart(scene):
    an, cam, static, mk, alpha = scene
    out = np.zeros((512, 512), np.float32)
    vessel = np.full_like(out, 7.0)  # overwritten
    plan = _plan(scene, ("intra_articular", "vascular"), 1)
    seen = False
    for f in range(16):
        pk = con.iodine_map(plan, f, cam, static, out, vessel)
        assert float(vessel.max()) == pytest.approx(pk.get("vascular", 0.0))
        assert np.all(vessel <= out + 1e-6)
        seen |= pk.get("vascular", 0.0) > con.VISIBLE_MG_MM2 and bool((out > vessel).any())
    assert seen
    alone = _plan(scene, ("vascular",), 1)
    for f in range(16):
        con.iodine_map(alone, f, cam, static, out, vessel)
        assert np.array_equal(out, vessel)
