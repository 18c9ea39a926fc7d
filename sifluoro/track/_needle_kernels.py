"""Numba kernels of the needle tracker: ridge map, oriented Hough voting, line sampling.

Pure array code (no DICOM, no pipeline). Images are float32 ``(rows, cols)``; coordinates
``(x=column, y=row)``. Outputs are written into caller-owned buffers so that the per-frame
path allocates nothing.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def ridge_map(smooth, mask, edge_gain, out):
    """Bright-line strength from the Hessian of a Gaussian-smoothed image.

    ``out[y, x] = -l1 - |l2| - edge_gain * |grad|`` where ``l1 <= l2`` are the Hessian
    eigenvalues (central differences). A thin bright line has ``l1 << 0`` and ``l2 ~ 0`` and no
    gradient at its centre; the bright shoulder of a step edge has a gradient, a dot has
    ``l2 ~ l1``; both score low. Border pixels and pixels outside ``mask`` are 0.
    """
    rows, cols = smooth.shape
    for y in range(rows):
        for x in range(cols):
            out[y, x] = 0.0
    for y in range(1, rows - 1):
        for x in range(1, cols - 1):
            if not mask[y, x]:
                continue
            c = smooth[y, x]
            dxx = smooth[y, x + 1] - 2.0 * c + smooth[y, x - 1]
            dyy = smooth[y + 1, x] - 2.0 * c + smooth[y - 1, x]
            dxy = 0.25 * (smooth[y + 1, x + 1] - smooth[y + 1, x - 1]
                          - smooth[y - 1, x + 1] + smooth[y - 1, x - 1])
            half_tr = 0.5 * (dxx + dyy)
            disc = math.sqrt(0.25 * (dxx - dyy) * (dxx - dyy) + dxy * dxy)
            l1 = half_tr - disc
            l2 = half_tr + disc
            gx = 0.5 * (smooth[y, x + 1] - smooth[y, x - 1])
            gy = 0.5 * (smooth[y + 1, x] - smooth[y - 1, x])
            out[y, x] = -l1 - abs(l2) - edge_gain * math.sqrt(gx * gx + gy * gy)


@njit(cache=True, nogil=True)
def line_angle(smooth, x, y):
    """Direction of a bright line through pixel (x, y) in [0, pi) from the Hessian."""
    c = smooth[y, x]
    dxx = smooth[y, x + 1] - 2.0 * c + smooth[y, x - 1]
    dyy = smooth[y + 1, x] - 2.0 * c + smooth[y - 1, x]
    dxy = 0.25 * (smooth[y + 1, x + 1] - smooth[y + 1, x - 1]
                  - smooth[y - 1, x + 1] + smooth[y - 1, x - 1])
    a = 0.5 * math.atan2(2.0 * dxy, dxx - dyy)
    if a < 0.0:
        a += math.pi
    return a


@njit(cache=True, nogil=True)
def hough_vote(smooth, score, z_min, z_cap, angle_lo, angle_hi, half_window, acc, rho_offset):
    """Oriented Hough transform of the pixels with ``score > z_min``.

    Each such pixel votes ``min(score, z_cap) - z_min`` for lines ``x cos(p) + y sin(p) = rho``
    whose direction ``p - pi/2`` is within ``half_window`` angle bins of its own Hessian
    direction. ``acc`` has one row per angle bin over ``[0, pi)`` and one column per integer
    ``rho + rho_offset``; only direction bins in ``[angle_lo, angle_hi]`` (inclusive, may wrap
    when ``angle_lo > angle_hi``) receive votes. ``acc`` is zeroed first. Returns the number of
    voting pixels.
    """
    n_theta, n_rho = acc.shape
    for i in range(n_theta):
        for j in range(n_rho):
            acc[i, j] = 0.0
    rows, cols = score.shape
    bin_rad = math.pi / n_theta
    # each bin's normal (line direction + pi/2), once, on its first vote: scalar cos and sin
    # as every vote took them (a table filled in a loop of its own could be vectorised with
    # other cos/sin routines, SVML)
    cos_t = np.empty(n_theta, np.float64)
    sin_t = np.empty(n_theta, np.float64)
    known = np.zeros(n_theta, np.bool_)
    n = 0
    for y in range(1, rows - 1):
        for x in range(1, cols - 1):
            z = score[y, x]
            if z <= z_min:
                continue
            w = min(z, z_cap) - z_min
            b = int(line_angle(smooth, x, y) / bin_rad + 0.5)
            n += 1
            for k in range(b - half_window, b + half_window + 1):
                kb = k % n_theta
                if angle_lo <= angle_hi:
                    if kb < angle_lo or kb > angle_hi:
                        continue
                elif kb < angle_lo and kb > angle_hi:
                    continue
                if not known[kb]:
                    phi = kb * bin_rad + 0.5 * math.pi
                    cos_t[kb] = math.cos(phi)
                    sin_t[kb] = math.sin(phi)
                    known[kb] = True
                r = x * cos_t[kb] + y * sin_t[kb] + rho_offset
                j = int(math.floor(r + 0.5))
                if 0 <= j < n_rho:
                    acc[kb, j] += w
    return n


@njit(cache=True, nogil=True)
def bilinear(img, x, y):
    """Bilinear sample at (x, y); the nearest border value outside the image."""
    rows, cols = img.shape
    if x < 0.0:
        x = 0.0
    if y < 0.0:
        y = 0.0
    if x > cols - 1.0:
        x = cols - 1.0
    if y > rows - 1.0:
        y = rows - 1.0
    x0 = min(int(x), cols - 2) if cols > 1 else 0
    y0 = min(int(y), rows - 2) if rows > 1 else 0
    fx = x - x0
    fy = y - y0
    x1 = min(x0 + 1, cols - 1)
    y1 = min(y0 + 1, rows - 1)
    top = img[y0, x0] * (1.0 - fx) + img[y0, x1] * fx
    bot = img[y1, x0] * (1.0 - fx) + img[y1, x1] * fx
    return top * (1.0 - fy) + bot * fy


@njit(cache=True, nogil=True)
def line_support(score, x0, y0, ux, uy, half_width, out):
    """``out[i]`` = max of ``score`` over the pixels within ``half_width`` px across the line at
    ``(x0, y0) + i * (ux, uy)`` (unit step); ``floor`` when no pixel is inside the image."""
    rows, cols = score.shape
    nx = -uy
    ny = ux
    floor = -1e30
    for i in range(out.shape[0]):
        best = floor
        cx = x0 + i * ux
        cy = y0 + i * uy
        for k in range(-half_width, half_width + 1):
            xi = int(math.floor(cx + k * nx + 0.5))
            yi = int(math.floor(cy + k * ny + 0.5))
            if 0 <= xi < cols and 0 <= yi < rows:
                v = score[yi, xi]
                if v > best:
                    best = v
        out[i] = best


@njit(cache=True, nogil=True)
def line_contrast(img, x0, y0, ux, uy, step, offset, out):
    """Line contrast along an axis: ``out[i] = I(p) - (I(p + offset n) + I(p - offset n)) / 2``
    with ``p = (x0, y0) + i * step * (ux, uy)``, ``n`` the unit normal; bilinear samples."""
    nx = -uy
    ny = ux
    for i in range(out.shape[0]):
        px = x0 + i * step * ux
        py = y0 + i * step * uy
        c = bilinear(img, px, py)
        a = bilinear(img, px + offset * nx, py + offset * ny)
        b = bilinear(img, px - offset * nx, py - offset * ny)
        out[i] = c - 0.5 * (a + b)


@njit(cache=True, nogil=True)
def cross_peaks(img, x0, y0, ux, uy, step, half_width, out):
    """Sub-pixel offset across the axis of the brightest point of ``img`` at each of
    ``out.shape[0]`` stations ``(x0, y0) + i * step * (ux, uy)``: the vertex of a parabola
    through the best of the integer offsets ``-half_width..half_width`` and its neighbours
    (NaN when the best is at the border of the window)."""
    nx = -uy
    ny = ux
    for i in range(out.shape[0]):
        px = x0 + i * step * ux
        py = y0 + i * step * uy
        best = -1e30
        kb = 0
        for k in range(-half_width, half_width + 1):
            v = bilinear(img, px + k * nx, py + k * ny)
            if v > best:
                best = v
                kb = k
        if kb == -half_width or kb == half_width:
            out[i] = np.nan
            continue
        vm = bilinear(img, px + (kb - 1) * nx, py + (kb - 1) * ny)
        vp = bilinear(img, px + (kb + 1) * nx, py + (kb + 1) * ny)
        den = vm - 2.0 * best + vp
        out[i] = kb + (0.5 * (vm - vp) / den if den < 0.0 else 0.0)


@njit(cache=True, nogil=True)
def step_location(profile, lo, hi):
    """Index in ``[lo, hi)`` that best splits ``profile`` into a high part before and a low part
    after: maximises ``(mean(before) - mean(after)) * sqrt(n1 n2 / n)`` over the whole profile
    (the maximum-likelihood position of a falling step in white noise). Returns (index, t-value
    numerator) where the split is between ``index - 1`` and ``index``."""
    n = profile.shape[0]
    total = 0.0
    for i in range(n):
        total += profile[i]
    best = -1e30
    best_i = lo
    left = 0.0
    for i in range(0, hi):
        if i >= lo and i > 0:
            n1 = i
            n2 = n - i
            m1 = left / n1
            m2 = (total - left) / n2
            s = (m1 - m2) * math.sqrt(n1 * n2 / n)
            if s > best:
                best = s
                best_i = i
        left += profile[i]
    return best_i, best


@njit(cache=True, nogil=True)
def best_interval(values, bias, max_gap):
    """Maximum-sum interval of ``values - bias`` (Kadane), not crossing a run of more than
    ``max_gap`` consecutive values below ``bias``. Returns (start, end inclusive, sum)."""
    best = 0.0
    best_a = 0
    best_b = -1
    run = 0.0
    a = 0
    below = 0
    for i in range(values.shape[0]):
        v = values[i] - bias
        below = below + 1 if v < 0.0 else 0
        if run <= 0.0 or below > max_gap:
            run = 0.0
            a = i
            if v < 0.0:
                continue
        run += v
        if run > best:
            best = run
            best_a = a
            best_b = i
    return best_a, best_b, best


@njit(cache=True, nogil=True)
def line_flanks(img, x0, y0, ux, uy, step, offset, out_min, out_mean):
    """One-sided line contrasts along an axis at ``p = (x0, y0) + i * step * (ux, uy)``:
    ``l = I(p) - I(p + offset n)``, ``r = I(p) - I(p - offset n)`` (``n`` the unit normal,
    bilinear samples); ``out_min[i] = min(l, r)``, ``out_mean[i] = (l + r) / 2``. A thin bright
    line has both flanks dark (``min ~ mean``); a step edge has one (``min <= 0``)."""
    nx = -uy
    ny = ux
    for i in range(out_min.shape[0]):
        px = x0 + i * step * ux
        py = y0 + i * step * uy
        c = bilinear(img, px, py)
        left = c - bilinear(img, px + offset * nx, py + offset * ny)
        right = c - bilinear(img, px - offset * nx, py - offset * ny)
        out_min[i] = min(left, right)
        out_mean[i] = 0.5 * (left + right)



@njit(cache=True, nogil=True)
def _fit_line_masked(offs, step, use):
    """Least-squares ``offs[i] = a * (i * step) + b`` over the ``i`` with ``use[i]``."""
    n = 0
    st = 0.0
    sy = 0.0
    for i in range(offs.shape[0]):
        if use[i]:
            n += 1
            st += i * step
            sy += offs[i]
    tm = st / n
    ym = sy / n
    den = 0.0
    num = 0.0
    for i in range(offs.shape[0]):
        if use[i]:
            dt = i * step - tm
            den += dt * dt
            num += dt * (offs[i] - ym)
    a = num / den if den > 0.0 else 0.0
    return a, ym - a * tm


@njit(cache=True, nogil=True)
def axis_fit(offs, step, min_ok, min_keep):
    """Robust line ``offs ~ a * t + b`` (``t = i * step``) through the finite offsets of
    :func:`cross_peaks`: a least-squares fit, then again on the offsets whose residual is below
    ``max(0.75, 2.5 * median residual)`` when at least ``min_keep`` are. Returns (found, a, b);
    not found when fewer than ``min_ok`` offsets are finite. One call instead of a dozen NumPy
    calls: the candidate loop of a full search refits ~25 axes."""
    n = offs.shape[0]
    use = np.empty(n, np.bool_)
    m = 0
    for i in range(n):
        use[i] = math.isfinite(offs[i])
        if use[i]:
            m += 1
    if m < min_ok or m == 0:
        return False, 0.0, 0.0
    a, b = _fit_line_masked(offs, step, use)
    res = np.empty(m, np.float64)
    k = 0
    for i in range(n):
        if use[i]:
            res[k] = abs(offs[i] - (a * (i * step) + b))
            k += 1
    cut = max(0.75, 2.5 * np.median(res))
    kept = 0
    k = 0
    for i in range(n):
        if use[i]:
            use[i] = res[k] < cut
            k += 1
            if use[i]:
                kept += 1
    if kept >= min_keep:
        a, b = _fit_line_masked(offs, step, use)
    return True, a, b


def warm_up(shape: tuple[int, int]) -> None:
    """Compile every kernel (or load it from the cache) on float32 arrays of ``shape``, the
    working-grid size of the real frames."""
    rows, cols = max(shape[0], 8), max(shape[1], 8)
    img = np.zeros((rows, cols), np.float32)
    mask = np.ones((rows, cols), np.bool_)
    out = np.empty_like(img)
    ridge_map(img, mask, np.float32(0.5), out)
    acc = np.empty((180, 2 * (rows + cols) + 3), np.float32)
    hough_vote(img, out, np.float32(1.5), np.float32(6.0), 0, 179, 4, acc, float(rows + cols + 1))
    prof32 = np.empty(8, np.float32)
    line_support(out, 1.0, 1.0, 1.0, 0.0, 1, prof32)
    best_interval(prof32, np.float32(0.5), 3)
    prof = np.empty(8, np.float64)
    line_contrast(img, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, prof)
    line_contrast(img.astype(np.float64), 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, prof)
    cross_peaks(img, 1.0, 1.0, 1.0, 0.0, 1.0, 2, prof)
    cross_peaks(out, 1.0, 1.0, 1.0, 0.0, 1.0, 2, prof)
    step_location(prof, 1, 7)
    axis_fit(prof, 1.0, 4, 4)
    prof2 = np.empty(8, np.float64)
    line_flanks(img, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, prof, prof2)
