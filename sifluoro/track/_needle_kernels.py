"""Numba kernels of the needle tracker: ridge map, oriented Hough voting, line sampling.

Pure array code (no DICOM, no pipeline). Images are float32 ``(rows, cols)``; coordinates
``(x=column, y=row)``. Outputs are written into caller-owned buffers so that the per-frame
path allocates nothing.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from sifluoro._imaging_kernels import median_into, select_kth


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
def _pair_mismatch(a, b, s, m, n, stride):
    """Var(a[i - s] - b[i + s]) / (var(a[i - s]) + var(b[i + s])) over every ``stride``-th
    ``i`` in ``[0, n)``; ``a``, ``b`` hold station ``i`` at index ``i + m``."""
    k = 0
    sa = sb = sd = qa = qb = qd = 0.0
    for i in range(0, n, stride):
        va = a[i - s + m]
        vb = b[i + s + m]
        sa += va
        sb += vb
        sd += va - vb
        qa += va * va
        qb += vb * vb
        qd += (va - vb) * (va - vb)
        k += 1
    var_a = qa / k - (sa / k) ** 2
    var_b = qb / k - (sb / k) ** 2
    var_d = qd / k - (sd / k) ** 2
    return var_d / (var_a + var_b + 1e-12)


@njit(cache=True, nogil=True)
def sheared_contrast(img, x0, y0, ux, uy, step, offset, max_shift, stride, gain, flanks, out,
                     plain):
    """Line contrast along an axis against flanks sheared along it: ``out[i] = I(p_i) -
    (I(p_{i-s} + offset n) + I(p_{i+s} - offset n)) / 2``, ``p_i = (x0, y0) + i step u``,
    ``n`` the unit normal. ``s``, a multiple of ``stride`` in ``[-max_shift, max_shift]``,
    best aligns the flanks at ``offset`` (shift ``s``) and at ``2 offset`` (shift ``2 s``),
    compared on every ``stride``-th station, and with a mismatch below ``gain`` times the
    unsheared one (else ``s = 0``). A straight background edge or band crossing the axis
    obliquely then falls on the centre and both flanks at the same station and cancels, where
    unsheared flanks see it elsewhere and leave a step in the contrast. ``flanks`` is scratch
    of shape (4, >= n + 4 max_shift). ``plain`` receives the unsheared contrast (as
    :func:`line_contrast`). Returns ``s``."""
    n = out.shape[0]
    m = 2 * max_shift
    nx = -uy
    ny = ux
    for j in range(n + 2 * m):
        px = x0 + (j - m) * step * ux
        py = y0 + (j - m) * step * uy
        flanks[0, j] = bilinear(img, px + offset * nx, py + offset * ny)
        flanks[1, j] = bilinear(img, px - offset * nx, py - offset * ny)
        flanks[2, j] = bilinear(img, px + 2.0 * offset * nx, py + 2.0 * offset * ny)
        flanks[3, j] = bilinear(img, px - 2.0 * offset * nx, py - 2.0 * offset * ny)
    best = 1e30
    best_s = 0
    v0 = 0.0
    for k in range(0, max_shift + 1, stride):
        for sign in (1, -1):
            s = sign * k
            if k == 0 and sign < 0:
                continue
            v = (_pair_mismatch(flanks[0], flanks[1], s, m, n, stride)
                 + _pair_mismatch(flanks[2], flanks[3], 2 * s, m, n, stride))
            if k == 0:
                v0 = v
            if v < best:
                best = v
                best_s = s
    # on texture or noise alone some shift always fits a little better: shear only when the
    # flanks align clearly better than unsheared
    if best >= gain * v0:
        best_s = 0
    for i in range(n):
        c = bilinear(img, x0 + i * step * ux, y0 + i * step * uy)
        out[i] = c - 0.5 * (flanks[0, i - best_s + m] + flanks[1, i + best_s + m])
        plain[i] = c - 0.5 * (flanks[0, i + m] + flanks[1, i + m])
    return best_s


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


@njit(cache=True, nogil=True)
def _row_max(row, lanes):
    """Largest value of ``row`` (no NaN), in 8 independent lanes so that it vectorises (a
    single running max does not without fastmath; the max is the same in any order)."""
    n = row.shape[0]
    for k in range(8):
        lanes[k] = row[0]
    j = 0
    while j + 8 <= n:
        for k in range(8):
            v = row[j + k]
            lanes[k] = v if v > lanes[k] else lanes[k]
        j += 8
    m = lanes[0]
    for k in range(1, 8):
        m = lanes[k] if lanes[k] > m else m
    for jj in range(j, n):
        m = row[jj] if row[jj] > m else m
    return m


@njit(cache=True, nogil=True)
def hough_peaks(acc, n_peaks, rho_offset, out):
    """The strongest cells of the Hough accumulator, each suppressing its neighbours: the first
    maximum in row-major order (``np.argmax``), then the cells within 6 angle bins and 10 rho
    bins of it set to 0 (a wrapped angle bin at ``2 * rho_offset - j``), up to ``n_peaks``
    times or until the maximum is not positive. Writes ``(i, j)`` rows into ``out``; returns
    their number. Keeps each row's maximum, so a peak costs the 13 rows it changes, not a scan
    of the whole accumulator."""
    n_theta, n_rho = acc.shape
    row_max = np.empty(n_theta, acc.dtype)
    lanes = np.empty(8, acc.dtype)
    for i in range(n_theta):
        row_max[i] = _row_max(acc[i], lanes)
    n = 0
    for _ in range(n_peaks):
        i = 0
        for ii in range(1, n_theta):
            if row_max[ii] > row_max[i]:
                i = ii
        best = row_max[i]
        j = 0
        while acc[i, j] != best:
            j += 1
        if best <= 0.0:
            break
        out[n, 0] = i
        out[n, 1] = j
        n += 1
        for di in range(-6, 7):
            ii = (i + di) % n_theta
            jj = j if 0 <= i + di < n_theta else 2 * rho_offset - j
            for jx in range(max(0, jj - 10), min(jj + 11, n_rho)):
                acc[ii, jx] = 0.0
            row_max[ii] = _row_max(acc[ii], lanes)
    return n


@njit(cache=True, nogil=True)
def segment_span(score, x0, y0, ux, uy, z_cap, bias, max_gap, prof):
    """The best-supported interval along the line ``(x0, y0) + t (ux, uy)`` inside
    ``[1, cols-2] x [1, rows-2]``: the line's integer parameter range there ``t_lo..t_hi``,
    :func:`line_support` (half width 1) along it clipped to ``+-z_cap``, and its
    :func:`best_interval`. Returns (inside, t_lo, start, end, sum); ``inside`` false when the
    range is shorter than 2. ``prof`` (float32) holds the support."""
    rows, cols = score.shape
    t_lo = -1e9
    t_hi = 1e9
    for axis in range(2):
        p = x0 if axis == 0 else y0
        u = ux if axis == 0 else uy
        hi = (cols - 2) if axis == 0 else (rows - 2)
        if abs(u) < 1e-9:
            if p < 1 or p > hi:
                return False, 0, 0, -1, 0.0
            continue
        a = (1 - p) / u
        b = (hi - p) / u
        t_lo = max(t_lo, min(a, b))
        t_hi = min(t_hi, max(a, b))
    lo = math.ceil(t_lo)
    top = math.floor(t_hi)
    if top - lo < 2:
        return False, 0, 0, -1, 0.0
    n = int(top - lo) + 1
    support = prof[:n]
    line_support(score, x0 + lo * ux, y0 + lo * uy, ux, uy, 1, support)
    for i in range(n):
        v = support[i]
        support[i] = -z_cap if v < -z_cap else (z_cap if v > z_cap else v)
    a, b, total = best_interval(support, bias, max_gap)
    return True, int(lo), a, b, total


# -- the run's field mask (needle_field.py) --------------------------------------------------

@njit(cache=True, nogil=True)
def _max3(a, b, c):
    m = a if a > b else b
    return m if m > c else c


@njit(cache=True, nogil=True)
def _min3(a, b, c):
    m = a if a < b else b
    return m if m < c else c


@njit(cache=True, nogil=True)
def glyph_cells(att, lo, hi, factor, top, jump, out):
    """Set ``out[y // factor, x // factor] = 1`` (uint8 cells) for the glyph seeds of pixel rows
    ``lo..hi-1``: pixels whose 3x3 maximum is at least ``top`` and exceeds the 3x3 minimum by
    more than ``jump`` (windows cut at the image border, as ``cv2.dilate``/``erode`` do).
    Pixels past the last whole cell are left out. One pass instead of a dilate, an erode, two
    compares and a pooling of the band (float32 ``att``, ``top`` and ``jump``: the compares
    NumPy makes). No NaN in ``att``."""
    rows, cols = att.shape
    hi = min(hi, (rows // factor) * factor)
    width = (cols // factor) * factor
    cmax = np.empty(cols, att.dtype)
    cmin = np.empty(cols, att.dtype)
    flag = np.zeros(width, np.uint8)
    for y in range(lo, hi):
        ra = att[max(y - 1, 0)]
        rb = att[y]
        rc = att[min(y + 1, rows - 1)]
        for x in range(cols):
            cmax[x] = _max3(ra[x], rb[x], rc[x])
            cmin[x] = _min3(ra[x], rb[x], rc[x])
        any_set = np.uint8(0)
        # the interior without index clamps (so that it vectorises), the two ends apart
        for x in range(1, min(width, cols - 1)):
            h = _max3(cmax[x - 1], cmax[x], cmax[x + 1])
            m = _min3(cmin[x - 1], cmin[x], cmin[x + 1])
            f = np.uint8(h >= top) & np.uint8(h - m > jump)
            flag[x] = f
            any_set |= f
        for x in (0, width - 1):
            if x < 0 or 0 < x < cols - 1:
                continue
            xa = max(x - 1, 0)
            xb = min(x + 1, cols - 1)
            h = _max3(cmax[xa], cmax[x], cmax[xb])
            m = _min3(cmin[xa], cmin[x], cmin[xb])
            f = np.uint8(h >= top) & np.uint8(h - m > jump)
            flag[x] = f
            any_set |= f
        if any_set:
            cy = y // factor
            for x in range(width):
                if flag[x]:
                    out[cy, x // factor] = 1


@njit(cache=True, nogil=True)
def cells_any_below(att, threshold, factor, out):
    """``out[cy, cx]`` (bool) = any pixel of the cell of ``factor`` x ``factor`` pixels is below
    ``threshold`` (the trailing remainder of rows and columns left out)."""
    n_rows, n_cols = out.shape
    width = n_cols * factor
    below = np.zeros(((width + 7) // 8) * 8, np.uint8)
    for cy in range(n_rows):
        r = att[cy * factor]
        for x in range(width):
            below[x] = np.uint8(r[x] < threshold)
        for dy in range(1, factor):
            r = att[cy * factor + dy]
            for x in range(width):
                below[x] |= np.uint8(r[x] < threshold)
        o = out[cy]
        if factor == 1:
            # the 512² frame's cells are its pixels: a strided loop of one did not vectorise
            for cx in range(n_cols):
                o[cx] = below[cx] != 0
        elif factor == 2:
            # a cell's two bytes as one word: a strided loop over cells did not vectorise
            pairs = below.view(np.uint16)
            for cx in range(n_cols):
                o[cx] = pairs[cx] != 0
        else:
            for cx in range(n_cols):
                v = np.uint8(0)
                for dx in range(factor):
                    v |= below[cx * factor + dx]
                o[cx] = v != 0


@njit(cache=True, nogil=True)
def field_cells_into(in_y, in_x, dy2, dx2, r2, out):
    """``out[i, j]`` (bool) = ``in_y[i] and in_x[j] and dy2[i] + dx2[j] <= r2`` (float64): the
    outer products of ``needle_field._field_cells``'s reference without its frame-sized
    float64 and bool temporaries (0.2-0.3 ms of a run's first frame)."""
    n_rows, n_cols = out.shape
    for i in range(n_rows):
        o = out[i]
        if not in_y[i]:
            for j in range(n_cols):
                o[j] = False
            continue
        d = dy2[i]
        for j in range(n_cols):
            o[j] = in_x[j] and d + dx2[j] <= r2


@njit(cache=True, nogil=True)
def _dilate_rows_bits(bits, half_widths, cols, spread, out):
    """``out`` = the dilation of the bit rows ``bits`` (rows, words; bit ``x % 64`` of word
    ``x // 64`` is column ``x``, the bits past ``cols`` clear) by the centred element whose row
    ``dy + r`` spans ``half_widths[dy + r]`` columns either side (a negative width: an empty
    row), reading outside the image as clear; the bits past ``cols`` are cleared. ``spread``
    (max width + 1, rows, words) is scratch: each row widened by 0, 1, ... columns."""
    rows, words = bits.shape
    zero = np.uint64(0)
    tail = cols - 64 * (words - 1)
    keep = (~zero if tail == 64 else (np.uint64(1) << np.uint64(tail)) - np.uint64(1))
    n_w = spread.shape[0]
    for y in range(rows):
        b = bits[y]
        for j in range(words):
            spread[0, y, j] = b[j]
        for k in range(1, n_w):  # widened by k: the row widened by k - 1 and its k-shifts
            uk, ck = np.uint64(k), np.uint64(64 - k)
            for j in range(words):
                w = b[j]
                before = b[j - 1] if j > 0 else zero
                after = b[j + 1] if j + 1 < words else zero
                spread[k, y, j] = (spread[k - 1, y, j] | (w << uk) | (before >> ck)
                                   | (w >> uk) | (after << ck))
    r = (half_widths.shape[0] - 1) // 2
    for y in range(rows):
        for j in range(words):
            out[y, j] = zero
        for d in range(-r, r + 1):
            yy = y + d
            w = half_widths[d + r]
            if yy < 0 or yy >= rows or w < 0:
                continue
            for j in range(words):
                out[y, j] |= spread[w, yy, j]
        out[y, words - 1] &= keep


@njit(cache=True, nogil=True)
def dilate_bits(bits, half_widths, cols, out):
    """``cv2.dilate(mask, element)`` on bit rows (see :func:`_dilate_rows_bits`; OpenCV's
    border: outside the image is clear)."""
    rows, words = bits.shape
    if rows == 0 or words == 0:
        return
    spread = np.empty((max(0, int(half_widths.max())) + 1, rows, words), np.uint64)
    _dilate_rows_bits(bits, half_widths, cols, spread, out)


@njit(cache=True, nogil=True)
def close_bits(bits, half_widths, cols, out):
    """The closing ``cv2.morphologyEx(mask, MORPH_CLOSE, element)`` on bit rows (see
    :func:`_dilate_rows_bits`; ``bits`` is overwritten, ``out`` gets the closing, its bits past
    ``cols`` clear) by a centred element given by its rows' half-widths (OpenCV's ellipse),
    with OpenCV's borders: the dilation reads outside the image as clear, the erosion as set,
    and the erosion is the complement of the dilation of the complement."""
    rows, words = bits.shape
    if rows == 0 or words == 0:
        return
    zero = np.uint64(0)
    one = np.uint64(1)
    n_w = max(0, int(half_widths.max())) + 1
    spread = np.empty((n_w, rows, words), np.uint64)
    _dilate_rows_bits(bits, half_widths, cols, spread, out)
    tail = cols - 64 * (words - 1)
    keep = (~zero if tail == 64 else (one << np.uint64(tail)) - one)
    for y in range(rows):  # the complement, clear past the last column (set outside)
        for j in range(words):
            bits[y, j] = ~out[y, j]
        bits[y, words - 1] &= keep
    _dilate_rows_bits(bits, half_widths, cols, spread, out)
    for y in range(rows):
        for j in range(words):
            out[y, j] = ~out[y, j]
        out[y, words - 1] &= keep


@njit(cache=True, nogil=True)
def mask_moments(mask):
    """Raw moments ``(m00, m10, m01)`` of a boolean mask: the count of its set cells and the
    sums of their x and y (integers, as ``cv2.moments(..., binaryImage=True)`` gives them)."""
    rows, cols = mask.shape
    m00 = 0
    m10 = 0
    m01 = 0
    for y in range(rows):
        n = 0
        sx = 0
        for x in range(cols):
            if mask[y, x]:
                n += 1
                sx += x
        m00 += n
        m10 += sx
        m01 += n * y
    return m00, m10, m01


@njit(cache=True, nogil=True)
def edge_points(bounded):
    """(x, y) float64 of the cells of ``bounded`` (uint8) that are 0 with a set cell among
    their 8 neighbours, in row-major order (``cv2.findNonZero(dilate3x3(b) - b)``)."""
    rows, cols = bounded.shape
    # each cell's row neighbourhood (x-1..x+1) has a set cell; interior loops without clamps
    near = np.zeros((rows, cols), np.uint8)
    for y in range(rows):
        b = bounded[y]
        h = near[y]
        for x in range(1, cols - 1):
            h[x] = np.uint8((b[x - 1] | b[x] | b[x + 1]) != 0)
        h[0] = np.uint8((b[0] | b[min(1, cols - 1)]) != 0)
        h[cols - 1] = np.uint8((b[cols - 1] | b[max(cols - 2, 0)]) != 0)
    edge = np.zeros((rows, cols), np.uint8)
    count = np.zeros(rows, np.int64)
    for y in range(rows):
        b = bounded[y]
        ha = near[max(y - 1, 0)]
        hb = near[y]
        hc = near[min(y + 1, rows - 1)]
        e = edge[y]
        n = 0
        for x in range(cols):
            v = np.uint8(b[x] == 0) & (ha[x] | hb[x] | hc[x])
            e[x] = v
            n += v
        count[y] = n
    pts = np.empty((count.sum(), 2), np.float64)
    n = 0
    for y in range(rows):
        if count[y] == 0:
            continue
        e = edge[y]
        for x in range(cols):
            if e[x]:
                pts[n, 0] = x
                pts[n, 1] = y
                n += 1
    return pts


@njit(cache=True, nogil=True)
def chamfer_min(points, x, y, axial, diagonal):
    """``min over points of axial * (hi - lo) + diagonal * lo`` with ``lo, hi`` the smaller and
    larger of ``|px - x|, |py - y|``: the 3x3 chamfer distance to the nearest point."""
    best = np.inf
    for i in range(points.shape[0]):
        dx = abs(points[i, 0] - x)
        dy = abs(points[i, 1] - y)
        lo = min(dx, dy)
        hi = max(dx, dy)
        d = axial * (hi - lo) + diagonal * lo
        if d < best:
            best = d
    return best


# -- the noise unit of the ridge score (needle_detect.laplacian_noise) -----------------------

_MAD_BINS = 4096  # as imaging.median's


@njit(cache=True, nogil=True)
def median_f32(a, n):
    """``np.median(a[:n])`` of float32 values without NaN, as NumPy computes it (the mean of
    the two middle values in float32 when ``n`` is even); reorders ``a[:n]``."""
    k = n // 2
    select_kth(a, n, k)
    if n % 2 == 1:
        return a[k]
    below = a[0]
    for i in range(1, k):
        if a[i] > below:
            below = a[i]
    return (below + a[k]) / np.float32(2.0)


@njit(cache=True, nogil=True)
def laplacian_sample(smooth, valid, stride, out):
    """The 5-point Laplacian of ``smooth`` (float32, summed as NumPy sums the shifted slices)
    at the cells ``(1 + i * stride, 1 + j * stride)`` inside the border where ``valid``, in
    row-major order, into ``out``; returns their number."""
    rows, cols = smooth.shape
    four = np.float32(4.0)
    n = 0
    for y in range(1, rows - 1, stride):
        for x in range(1, cols - 1, stride):
            if valid[y, x]:
                out[n] = (smooth[y, x + 1] + smooth[y, x - 1] + smooth[y + 1, x]
                          + smooth[y - 1, x] - four * smooth[y, x])
                n += 1
    return n


@njit(cache=True, nogil=True)
def laplacian_mad(smooth, valid, stride, buf):
    """Median absolute deviation of :func:`laplacian_sample` (``buf`` holds the sample;
    float32 as NumPy's medians give it); -1 when fewer than 16 cells are valid. The medians
    are :func:`~sifluoro._imaging_kernels.median_into`'s (binned, exact): a field search's
    ~29k values took 0.44 ms by selection, 0.07 ms so. Only a zero median's sign may differ
    from a selection's, which the absolute deviations and the caller's floor do not see."""
    n = laplacian_sample(smooth, valid, stride, buf)
    if n < 16:
        return -1.0
    v = buf[:n]
    cand = np.empty(n, np.float32)
    hist = np.empty(_MAD_BINS, np.int64)
    med = median_into(v, cand, hist)
    for i in range(n):
        buf[i] = abs(buf[i] - med)
    return median_into(v, cand, hist)


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
    sheared_contrast(img, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 2, 2, 0.8, np.empty((4, 16)), prof,
                     np.empty(8, np.float64))
    sheared_contrast(img.astype(np.float64), 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 2, 2, 0.8,
                     np.empty((4, 16)), prof, np.empty(8, np.float64))
    cross_peaks(img, 1.0, 1.0, 1.0, 0.0, 1.0, 2, prof)
    cross_peaks(out, 1.0, 1.0, 1.0, 0.0, 1.0, 2, prof)
    step_location(prof, 1, 7)
    axis_fit(prof, 1.0, 4, 4)
    prof2 = np.empty(8, np.float64)
    line_flanks(img, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, prof, prof2)
    laplacian_mad(img, mask, 3, np.empty(rows * cols, np.float32))
    hough_peaks(acc, 10, rows + cols + 1, np.empty((10, 2), np.int64))
    segment_span(out, 1.0, 1.0, 1.0, 0.0, np.float32(6.0), np.float32(0.5), 3,
                 np.empty(rows + cols, np.float32))
    # the field mask's kernels (full-resolution image; the types, not the size, matter)
    cells = np.zeros((rows // 2, cols // 2), np.uint8)
    glyph_cells(img, 0, rows, 2, np.float32(0.995), np.float32(0.5), cells)
    cells_any_below(img, np.float32(0.9995), 2, np.empty((rows // 2, cols // 2), np.bool_))
    mask_moments(mask)
    bits = np.zeros((rows // 2, 1), np.uint64)
    half_widths = np.array([0, 1, 0], np.int64)
    half_widths.flags.writeable = False  # as needle_field keeps them (cached, shared)
    close_bits(bits, half_widths, 8, np.empty_like(bits))
    dilate_bits(bits, half_widths, 8, np.empty_like(bits))
    flags = np.ones(4, np.bool_)
    field_cells_into(flags, flags, np.zeros(4), np.zeros(4), 1.0, np.empty((4, 4), np.bool_))
    pts = edge_points(cells)
    chamfer_min(pts, 1.0, 1.0, 0.955, 1.3693)
