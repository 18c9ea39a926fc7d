"""Numba kernels of the simulator: anatomy density, ray casting, analytic metal and gas paths,
polychromatic combination.

Pure arrays in, arrays out. Geometry conventions (shared with :mod:`sifluoro.sim.geometry`):
a camera is the float64 vector ``cam = [Sx, Sy, Sz, Cx, Cy, Cz, ux, uy, uz, vx, vy, vz,
spacing_mm, centre_px]`` where S is the focal spot, C the detector centre, u the unit vector
along columns and v along rows (both in the detector plane); pixel (x=col, y=row) sits at
``C + (x - centre_px) * spacing_mm * u + (y - centre_px) * spacing_mm * v``.

Anatomy is a float64 parameter vector (indices ``A_*`` below) in canonical coordinates where
``x' = side_sign * x`` so the ilium of the target joint is always on +x'.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# anatomy parameter indices
A_SIGN = 0          # +1 left joint, -1 right joint
A_TAN = 1           # tan of the joint obliquity (x' decreases posteriorly)
A_KAPPA = 2         # curvature of the joint in depth, 1/mm
A_TILT = 3          # dx'/dz of the joint in the coronal plane
A_AMP_C = 4         # C-shaped bow, mm
A_AMP_S = 5         # S-shaped bow, mm
A_ZINF = 6          # inferior end of the synovial joint, mm
A_ZSUP = 7          # superior end, mm
A_DH = 8            # half depth of the synovial part, mm
A_W0 = 9            # joint gap, mm
A_XM = 10           # midline x', mm
A_SHELL = 11        # cortical thickness, mm
A_TRAB = 12         # trabecular density relative to cortical bone
A_TEXAMP = 13       # relative amplitude of trabecular texture
A_SAC_ANT = 14      # extra sacral thickness anterior to the joint, mm
A_SAC_POST = 15     # extra sacral thickness posterior to the joint, mm
A_ALA_TOP = 16      # sacral ala top above the joint's superior end, mm
A_IL_TJ = 17        # iliac half thickness at the joint, mm
A_CREST_H = 18      # iliac crest height above the joint's superior end, mm
A_NOTCH_R = 19      # greater sciatic notch radius, mm
A_FOR_X = 20        # foramina distance from the midline, mm
A_WAVE = 21         # amplitude of the joint-surface waviness along z, mm
A_WAVE_K = 22       # wavenumber of the waviness, rad/mm
A_L5 = 23           # 1 when the L5 vertebra is modelled
A_JX_LO = 24        # x' bounds of the joint band (for cheap culling in the ray caster)
A_JX_HI = 25
N_ANAT = 26

# joint-gap widening rates outside the synovial part, 1/mm
_K_INF = 0.05
_K_SUP = 0.012
_K_DEPTH = 0.06


@njit(cache=True, nogil=True)
def joint_x(y, z, a):
    """Canonical x' of the joint mid-surface and its partial derivatives (J, J_y, J_z)."""
    length = a[A_ZSUP] - a[A_ZINF]
    t = (z - a[A_ZINF]) / length
    t0 = -a[A_ZINF] / length
    x0 = (a[A_TILT] * z + a[A_AMP_C] * (math.sin(math.pi * t) - math.sin(math.pi * t0))
          + a[A_AMP_S] * (math.sin(2.0 * math.pi * t) - math.sin(2.0 * math.pi * t0))
          + a[A_WAVE] * math.sin(a[A_WAVE_K] * z))
    jz = (a[A_TILT] + a[A_AMP_C] * math.pi / length * math.cos(math.pi * t)
          + a[A_AMP_S] * 2.0 * math.pi / length * math.cos(2.0 * math.pi * t)
          + a[A_WAVE] * a[A_WAVE_K] * math.cos(a[A_WAVE_K] * z))
    jx = x0 - a[A_TAN] * y + 0.5 * a[A_KAPPA] * y * y
    jy = -a[A_TAN] + a[A_KAPPA] * y
    return jx, jy, jz


@njit(cache=True, nogil=True)
def gap_width(y, z, a):
    """Width of the space between sacrum and ilium (mm); widens outside the synovial part."""
    w = a[A_W0]
    if z < a[A_ZINF]:
        w += _K_INF * (a[A_ZINF] - z) ** 2
    elif z > a[A_ZSUP]:
        w += _K_SUP * (z - a[A_ZSUP]) ** 2
    ay = abs(y)
    if ay > a[A_DH]:
        w += _K_DEPTH * (ay - a[A_DH]) ** 2
    return w


@njit(cache=True, nogil=True)
def _tex(tex, x, y, z):
    """Trilinear sample of a periodic 3-D texture tile with 1 mm cells."""
    n0, n1, n2 = tex.shape
    fx = math.floor(x)
    fy = math.floor(y)
    fz = math.floor(z)
    dx = x - fx
    dy = y - fy
    dz = z - fz
    i0 = int(fx) % n0
    j0 = int(fy) % n1
    k0 = int(fz) % n2
    i1 = (i0 + 1) % n0
    j1 = (j0 + 1) % n1
    k1 = (k0 + 1) % n2
    c00 = tex[i0, j0, k0] * (1 - dx) + tex[i1, j0, k0] * dx
    c10 = tex[i0, j1, k0] * (1 - dx) + tex[i1, j1, k0] * dx
    c01 = tex[i0, j0, k1] * (1 - dx) + tex[i1, j0, k1] * dx
    c11 = tex[i0, j1, k1] * (1 - dx) + tex[i1, j1, k1] * dx
    return (c00 * (1 - dy) + c10 * dy) * (1 - dz) + (c01 * (1 - dy) + c11 * dy) * dz


@njit(cache=True, nogil=True)
def _coverage(sdf, shell, h):
    """Partial-volume fractions (inside, core) of a solid with a cortical shell."""
    inside = min(max(0.5 - sdf / h, 0.0), 1.0)
    core = min(max(0.5 - (sdf + shell) / h, 0.0), 1.0)
    return inside, core


@njit(cache=True, nogil=True)
def bone_density(x, y, z, a, tex_fine, tex_coarse, h):
    """Bone density at a patient point (mm), relative to cortical bone.

    ``h`` is the partial-volume smoothing length (mm), about the sampling step.
    """
    xc = a[A_SIGN] * x
    xm = a[A_XM]
    xf = xm + abs(xc - xm)          # both halves of the pelvis are mirror images
    jx, jy, jz = joint_x(y, z, a)
    g = math.sqrt(1.0 + jy * jy + jz * jz)
    dj = (xf - jx) / g
    w = gap_width(y, z, a)
    dh = a[A_DH]

    # sacrum
    s_sac = dj + 0.5 * w
    mid = math.exp(-((xf - xm) / 30.0) ** 2)
    y_ant = -dh - a[A_SAC_ANT] - 0.12 * max(z, 0.0) - 18.0 * mid
    y_post = dh + a[A_SAC_POST] + 0.10 * max(-z, 0.0)
    s_sac = max(s_sac, y_ant - y, y - y_post)
    z_top = a[A_ZSUP] + a[A_ALA_TOP] - 0.004 * (xf - xm - 35.0) ** 2
    s_sac = max(s_sac, z - z_top)
    # sacral foramina: lucent holes with cortical rims, S1..S4
    fx = xm + a[A_FOR_X]
    for k in range(4):
        zk = a[A_ZSUP] - 8.0 - 24.0 * k
        rk = 6.5 - 0.8 * k
        s_sac = max(s_sac, rk - math.sqrt((xf - fx) ** 2 + (z - zk) ** 2 + 0.05 * y * y))
    # sacral canal behind the midline
    s_sac = max(s_sac, 9.0 - math.sqrt((xf - xm) ** 2 / 1.6 + (y - dh - 2.0) ** 2))

    # ilium
    lat = xf - (jx + a[A_TAN] * y)
    s_il = 0.5 * w - dj
    lat_p = max(lat, 0.0)
    yc = 9.0 - 0.55 * max(lat - 20.0, 0.0)
    th = 6.0 + (a[A_IL_TJ] - 6.0) * math.exp(-lat_p / 28.0)
    s_il = max(s_il, abs(y - yc) - th)
    z_crest = a[A_ZSUP] + a[A_CREST_H] - 0.0035 * (lat - 60.0) ** 2
    s_il = max(s_il, z - z_crest)
    # greater sciatic notch: a capsule removed inferior to the joint
    rn = a[A_NOTCH_R]
    j_inf, _, _ = joint_x(0.0, a[A_ZINF], a)
    nx = j_inf + 0.72 * rn
    nz = a[A_ZINF] - 0.72 * rn
    bx = -30.0
    bz = -110.0
    px = xf - nx
    pz = z - nz
    t = min(max((px * bx + pz * bz) / (bx * bx + bz * bz), 0.0), 1.0)
    dn = math.sqrt((px - t * bx) ** 2 + (pz - t * bz) ** 2)
    s_il = max(s_il, rn - dn)

    shell = a[A_SHELL]
    i1, c1 = _coverage(s_sac, shell, h)
    i2, c2 = _coverage(s_il, shell, h)
    i3 = 0.0
    c3 = 0.0
    if a[A_L5] > 0.5:
        # L5 body (rounded) and transverse process above the sacrum
        zb = a[A_ZSUP] + a[A_ALA_TOP] + 16.0
        rr = math.sqrt((xf - xm) ** 2 + (y + dh + 25.0) ** 2)
        s_l5 = max(abs(z - zb) - 13.0 + 0.004 * rr * rr, rr - 24.0)
        s_tp = max(abs(z - zb - 4.0) - 7.0 + 0.06 * max(xf - xm - 20.0, 0.0),
                   abs(y + 5.0) - 8.0, xf - xm - 52.0)
        s_l5 = min(s_l5, s_tp)
        i3, c3 = _coverage(s_l5, shell, h)
    if i1 == 0.0 and i2 == 0.0 and i3 == 0.0:
        return 0.0
    trab = 0.0
    if c1 > 0.0 or c2 > 0.0 or c3 > 0.0:
        trab = a[A_TRAB] * (1.0 + a[A_TEXAMP] * _tex(tex_fine, x, y, z)
                            + 0.5 * a[A_TEXAMP] * _tex(tex_coarse, x * 0.25, y * 0.25,
                                                       z * 0.25))
        trab = max(trab, 0.0)
    return max((i1 - c1) + c1 * trab, (i2 - c2) + c2 * trab, (i3 - c3) + c3 * trab)


@njit(cache=True, parallel=True)
def build_density_grid(out, origin, voxel_mm, a, tex_fine, tex_coarse):
    """Fill ``out[i, k, j]`` with the bone density at ``origin + (i, j, k) * voxel_mm``.

    The layout is (x, z, y), y fastest, because rays run mostly along y.
    """
    nx, nz, ny = out.shape
    for i in prange(nx):
        x = origin[0] + i * voxel_mm
        for k in range(nz):
            z = origin[2] + k * voxel_mm
            for j in range(ny):
                y = origin[1] + j * voxel_mm
                out[i, k, j] = bone_density(x, y, z, a, tex_fine, tex_coarse, voxel_mm)


@njit(cache=True, nogil=True)
def _grid_sample(grid, origin, inv_voxel, x, y, z):
    fx = (x - origin[0]) * inv_voxel
    fy = (y - origin[1]) * inv_voxel
    fz = (z - origin[2]) * inv_voxel
    nx, nz, ny = grid.shape
    if fx < 0 or fy < 0 or fz < 0 or fx >= nx - 1 or fy >= ny - 1 or fz >= nz - 1:
        return 0.0
    i = int(fx)
    j = int(fy)
    k = int(fz)
    dx = fx - i
    dy = fy - j
    dz = fz - k
    c00 = grid[i, k, j] * (1 - dy) + grid[i, k, j + 1] * dy
    c10 = grid[i + 1, k, j] * (1 - dy) + grid[i + 1, k, j + 1] * dy
    c01 = grid[i, k + 1, j] * (1 - dy) + grid[i, k + 1, j + 1] * dy
    c11 = grid[i + 1, k + 1, j] * (1 - dy) + grid[i + 1, k + 1, j + 1] * dy
    return (c00 * (1 - dx) + c10 * dx) * (1 - dz) + (c01 * (1 - dx) + c11 * dx) * dz


@njit(cache=True, nogil=True)
def pixel_ray(cam, col, row):
    """Unit direction from the focal spot through detector point (col, row) in pixels."""
    sp = cam[12]
    c = cam[13]
    px = cam[3] + (col - c) * sp * cam[6] + (row - c) * sp * cam[9]
    py = cam[4] + (col - c) * sp * cam[7] + (row - c) * sp * cam[10]
    pz = cam[5] + (col - c) * sp * cam[8] + (row - c) * sp * cam[11]
    dx = px - cam[0]
    dy = py - cam[1]
    dz = pz - cam[2]
    n = math.sqrt(dx * dx + dy * dy + dz * dz)
    return dx / n, dy / n, dz / n


@njit(cache=True, nogil=True)
def ellipse_chord(sx, sy, rx, ry, cx, cy, ax, by):
    """Length of a unit 3-D ray inside an elliptic cylinder along z (centre cx, cy; semi-axes)."""
    ox = (sx - cx) / ax
    oy = (sy - cy) / by
    dx = rx / ax
    dy = ry / by
    qa = dx * dx + dy * dy
    qb = 2.0 * (ox * dx + oy * dy)
    qc = ox * ox + oy * oy - 1.0
    disc = qb * qb - 4.0 * qa * qc
    if qa <= 0.0 or disc <= 0.0:
        return 0.0
    return math.sqrt(disc) / qa


@njit(cache=True, parallel=True)
def cast_static(cam, size, grid, origin, voxel_mm, a, tex_fine, tex_coarse, body,
                step_mm, bone_mm, body_mm, gap_mm, gap_z, gap_y):
    """Ray-cast the static anatomy for every pixel.

    Outputs (size, size) float32: ``bone_mm`` cortical-bone-equivalent path, ``body_mm`` soft
    tissue envelope chord, ``gap_mm`` path inside the synovial joint space of the target joint,
    and the path-weighted mean z and y where the ray meets that space (for contrast filling).
    Near the target joint the analytic density is sampled with fine steps so the 1-3 mm gap is
    resolved independently of the voxel size. ``body`` = [cx, cy, semi_x, semi_y].
    """
    inv_v = 1.0 / voxel_mm
    nx, nz, ny = grid.shape
    lo0 = origin[0]
    lo1 = origin[1]
    lo2 = origin[2]
    hi0 = origin[0] + (nx - 1) * voxel_mm
    hi1 = origin[1] + (ny - 1) * voxel_mm
    hi2 = origin[2] + (nz - 1) * voxel_mm
    sx = cam[0]
    sy = cam[1]
    sz = cam[2]
    n_sub = 4
    fine = step_mm / n_sub
    # half gap + cortical plate + partial-volume margin: beyond it the voxel grid is exact enough
    band = 0.5 * a[A_W0] + a[A_SHELL] + 1.5
    for row in prange(size):
        for col in range(size):
            rx, ry, rz = pixel_ray(cam, col, row)
            body_mm[row, col] = ellipse_chord(sx, sy, rx, ry, body[0], body[1], body[2], body[3])
            # slab intersection with the grid box
            t0 = 0.0
            t1 = 1e9
            ok = True
            for ax in range(3):
                s = sx if ax == 0 else (sy if ax == 1 else sz)
                r = rx if ax == 0 else (ry if ax == 1 else rz)
                lo = lo0 if ax == 0 else (lo1 if ax == 1 else lo2)
                hi = hi0 if ax == 0 else (hi1 if ax == 1 else hi2)
                if abs(r) < 1e-12:
                    if s < lo or s > hi:
                        ok = False
                else:
                    ta = (lo - s) / r
                    tb = (hi - s) / r
                    if ta > tb:
                        ta, tb = tb, ta
                    t0 = max(t0, ta)
                    t1 = min(t1, tb)
            acc = 0.0
            gl = 0.0
            gz = 0.0
            gy = 0.0
            if ok and t1 > t0:
                # per-pixel start jitter turns step aliasing (wood grain) into fine noise
                t = t0 + step_mm * (((row * 7919 + col * 104729) % 1013) / 1013.0)
                while t < t1:
                    x = sx + t * rx
                    y = sy + t * ry
                    z = sz + t * rz
                    near = False
                    xc = a[A_SIGN] * x
                    if (xc > a[A_JX_LO] and xc < a[A_JX_HI]
                            and z > a[A_ZINF] - 20.0 and z < a[A_ZSUP] + 20.0
                            and abs(y) < a[A_DH] + 12.0):
                        jx, jy, jz = joint_x(y, z, a)
                        if abs(xc - jx) < band + abs(jy) * step_mm:
                            near = True
                    if near:
                        for q in range(n_sub):
                            tq = t + (q + 0.5 - 0.5 * n_sub) * fine
                            xq = sx + tq * rx
                            yq = sy + tq * ry
                            zq = sz + tq * rz
                            acc += bone_density(xq, yq, zq, a, tex_fine, tex_coarse, 0.3) * fine
                            if (zq >= a[A_ZINF] and zq <= a[A_ZSUP]
                                    and abs(yq) <= a[A_DH]):
                                jx, jy, jz = joint_x(yq, zq, a)
                                dj = abs(a[A_SIGN] * xq - jx) / math.sqrt(1.0 + jy * jy + jz * jz)
                                ind = min(max(0.5 * a[A_W0] - dj + 0.5 * 0.3, 0.0) / 0.3, 1.0)
                                if ind > 0.0:
                                    gl += ind * fine
                                    gz += ind * fine * zq
                                    gy += ind * fine * yq
                    else:
                        acc += _grid_sample(grid, origin, inv_v, x, y, z) * step_mm
                    t += step_mm
            bone_mm[row, col] = acc
            gap_mm[row, col] = gl
            if gl > 0.0:
                gap_z[row, col] = gz / gl
                gap_y[row, col] = gy / gl
            else:
                gap_z[row, col] = 0.0
                gap_y[row, col] = 0.0


@njit(cache=True, nogil=True)
def tube_chord(sx, sy, sz, rx, ry, rz, ax, ay, az, bx, by, bz, radius):
    """Length of a unit ray (from S along r) inside the finite solid cylinder A-B of given radius."""
    ux = bx - ax
    uy = by - ay
    uz = bz - az
    length = math.sqrt(ux * ux + uy * uy + uz * uz)
    if length <= 0.0 or radius <= 0.0:
        return 0.0
    ux /= length
    uy /= length
    uz /= length
    wx = sx - ax
    wy = sy - ay
    wz = sz - az
    ra = rx * ux + ry * uy + rz * uz
    wa = wx * ux + wy * uy + wz * uz
    # perpendicular parts
    px = rx - ra * ux
    py = ry - ra * uy
    pz = rz - ra * uz
    qx = wx - wa * ux
    qy = wy - wa * uy
    qz = wz - wa * uz
    qa = px * px + py * py + pz * pz
    qb = 2.0 * (px * qx + py * qy + pz * qz)
    qc = qx * qx + qy * qy + qz * qz - radius * radius
    if qa < 1e-14:
        if qc >= 0.0:
            return 0.0
        t_lo = -1e18
        t_hi = 1e18
    else:
        disc = qb * qb - 4.0 * qa * qc
        if disc <= 0.0:
            return 0.0
        sq = math.sqrt(disc)
        t_lo = (-qb - sq) / (2.0 * qa)
        t_hi = (-qb + sq) / (2.0 * qa)
    if abs(ra) < 1e-14:
        if wa < 0.0 or wa > length:
            return 0.0
    else:
        s1 = -wa / ra
        s2 = (length - wa) / ra
        if s1 > s2:
            s1, s2 = s2, s1
        t_lo = max(t_lo, s1)
        t_hi = min(t_hi, s2)
    return max(t_hi - t_lo, 0.0)


@njit(cache=True, nogil=True)
def project_point(cam, x, y, z):
    """Pixel (col, row) and depth along the central axis of a patient point."""
    dx = cam[3] - cam[0]
    dy = cam[4] - cam[1]
    dz = cam[5] - cam[2]
    sid = math.sqrt(dx * dx + dy * dy + dz * dz)
    dx /= sid
    dy /= sid
    dz /= sid
    px = x - cam[0]
    py = y - cam[1]
    pz = z - cam[2]
    depth = px * dx + py * dy + pz * dz
    k = sid / depth / cam[12]
    col = (px * cam[6] + py * cam[7] + pz * cam[8]) * k + cam[13]
    row = (px * cam[9] + py * cam[10] + pz * cam[11]) * k + cam[13]
    return col, row, depth


@njit(cache=True)
def render_tubes(out, cam, seg_a, seg_b, r_out, r_in, weight, n_sub):
    """Add ``weight * chord`` of hollow cylinders (needle, wires, vessels) into ``out``.

    Each segment i is the finite tube seg_a[i]-seg_b[i] with outer radius r_out[i] and lumen
    radius r_in[i] (0 for solid). Each pixel is supersampled n_sub x n_sub for antialiasing.
    Only pixels in the projected bounding box of a segment are visited.
    """
    size = out.shape[0]
    dx = cam[3] - cam[0]
    dy = cam[4] - cam[1]
    dz = cam[5] - cam[2]
    sid = math.sqrt(dx * dx + dy * dy + dz * dz)
    sx = cam[0]
    sy = cam[1]
    sz = cam[2]
    for i in range(seg_a.shape[0]):
        if weight[i] == 0.0:
            continue
        ca, ra_, da = project_point(cam, seg_a[i, 0], seg_a[i, 1], seg_a[i, 2])
        cb, rb_, db = project_point(cam, seg_b[i, 0], seg_b[i, 1], seg_b[i, 2])
        if da <= 1.0 or db <= 1.0:
            continue
        pad = r_out[i] * sid / min(da, db) / cam[12] + 2.0
        c0 = max(int(math.floor(min(ca, cb) - pad)), 0)
        c1 = min(int(math.ceil(max(ca, cb) + pad)), size - 1)
        r0 = max(int(math.floor(min(ra_, rb_) - pad)), 0)
        r1 = min(int(math.ceil(max(ra_, rb_) + pad)), size - 1)
        inv = 1.0 / (n_sub * n_sub)
        for row in range(r0, r1 + 1):
            for col in range(c0, c1 + 1):
                acc = 0.0
                for p in range(n_sub):
                    for q in range(n_sub):
                        rx, ry, rz = pixel_ray(cam, col + (q + 0.5) / n_sub - 0.5,
                                               row + (p + 0.5) / n_sub - 0.5)
                        ch = tube_chord(sx, sy, sz, rx, ry, rz, seg_a[i, 0], seg_a[i, 1],
                                        seg_a[i, 2], seg_b[i, 0], seg_b[i, 1], seg_b[i, 2],
                                        r_out[i])
                        if ch > 0.0 and r_in[i] > 0.0:
                            ch -= tube_chord(sx, sy, sz, rx, ry, rz, seg_a[i, 0], seg_a[i, 1],
                                             seg_a[i, 2], seg_b[i, 0], seg_b[i, 1],
                                             seg_b[i, 2], r_in[i])
                        acc += ch
                out[row, col] += weight[i] * acc * inv


@njit(cache=True, nogil=True)
def ellipsoid_chord(sx, sy, sz, rx, ry, rz, centre, semi, rot):
    """Length of a unit ray inside an ellipsoid (rot rows = local axes)."""
    wx = sx - centre[0]
    wy = sy - centre[1]
    wz = sz - centre[2]
    ox = (rot[0, 0] * wx + rot[0, 1] * wy + rot[0, 2] * wz) / semi[0]
    oy = (rot[1, 0] * wx + rot[1, 1] * wy + rot[1, 2] * wz) / semi[1]
    oz = (rot[2, 0] * wx + rot[2, 1] * wy + rot[2, 2] * wz) / semi[2]
    dx = (rot[0, 0] * rx + rot[0, 1] * ry + rot[0, 2] * rz) / semi[0]
    dy = (rot[1, 0] * rx + rot[1, 1] * ry + rot[1, 2] * rz) / semi[1]
    dz = (rot[2, 0] * rx + rot[2, 1] * ry + rot[2, 2] * rz) / semi[2]
    qa = dx * dx + dy * dy + dz * dz
    qb = 2.0 * (ox * dx + oy * dy + oz * dz)
    qc = ox * ox + oy * oy + oz * oz - 1.0
    disc = qb * qb - 4.0 * qa * qc
    if disc <= 0.0:
        return 0.0
    return math.sqrt(disc) / qa


@njit(cache=True)
def render_ellipsoids(out, cam, centres, semis, rots):
    """Add the chord length (mm) through each ellipsoid into ``out`` (bounding box only)."""
    size = out.shape[0]
    sx = cam[0]
    sy = cam[1]
    sz = cam[2]
    dx = cam[3] - cam[0]
    dy = cam[4] - cam[1]
    dz = cam[5] - cam[2]
    sid = math.sqrt(dx * dx + dy * dy + dz * dz)
    for i in range(centres.shape[0]):
        cc, rr, dd = project_point(cam, centres[i, 0], centres[i, 1], centres[i, 2])
        big = max(semis[i, 0], max(semis[i, 1], semis[i, 2]))
        if dd <= big + 1.0:
            continue
        pad = big * sid / (dd - big) / cam[12] + 2.0
        c0 = max(int(cc - pad), 0)
        c1 = min(int(cc + pad) + 1, size - 1)
        r0 = max(int(rr - pad), 0)
        r1 = min(int(rr + pad) + 1, size - 1)
        for row in range(r0, r1 + 1):
            for col in range(c0, c1 + 1):
                rx, ry, rz = pixel_ray(cam, col, row)
                out[row, col] += ellipsoid_chord(sx, sy, sz, rx, ry, rz, centres[i], semis[i],
                                                 rots[i])


@njit(cache=True, parallel=True)
def polychromatic(out, water_mm, bone_mm, iodine_mg_mm2, steel_mm, weights, mu_water,
                  mu_bone, mu_iodine, mu_steel):
    """Detected primary signal relative to the unattenuated beam.

    ``out = sum_b weights[b] * exp(-(mu_water[b] * water + mu_bone[b] * bone
    + mu_iodine[b] * iodine + mu_steel[b] * steel))`` with mu in 1/mm (iodine: mm^2/mg) and
    weights the energy-bin shares of the detected signal (summing to 1).
    """
    rows, cols = out.shape
    nb = weights.shape[0]
    for r in prange(rows):
        for c in range(cols):
            w = max(water_mm[r, c], 0.0)
            b = bone_mm[r, c]
            i = iodine_mg_mm2[r, c]
            s = steel_mm[r, c]
            acc = 0.0
            for k in range(nb):
                acc += weights[k] * math.exp(-(mu_water[k] * w + mu_bone[k] * b
                                               + mu_iodine[k] * i + mu_steel[k] * s))
            out[r, c] = acc


def warm_up() -> None:
    """Compile every kernel on tiny inputs (so the first real frame is not slowed down)."""
    a = np.zeros(N_ANAT)
    a[A_SIGN] = 1.0
    a[A_TAN] = 0.4
    a[A_ZINF] = -8.0
    a[A_ZSUP] = 40.0
    a[A_DH] = 10.0
    a[A_W0] = 2.0
    a[A_XM] = -40.0
    a[A_SHELL] = 1.5
    a[A_TRAB] = 0.3
    a[A_NOTCH_R] = 25.0
    a[A_IL_TJ] = 25.0
    a[A_JX_LO] = -30.0
    a[A_JX_HI] = 30.0
    tex = np.zeros((4, 4, 4), np.float32)
    grid = np.zeros((4, 4, 4), np.float32)
    origin = np.array([-2.0, -2.0, -2.0])
    build_density_grid(grid, origin, 1.0, a, tex, tex)
    cam = np.array([0.0, -700.0, 0.0, 0.0, 300.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 1.0, 3.5])
    maps = [np.zeros((8, 8), np.float32) for _ in range(5)]
    cast_static(cam, 8, grid, origin, 1.0, a, tex, tex, np.array([0.0, 0.0, 150.0, 100.0]),
                0.7, *maps)
    seg = np.array([[0.0, 0.0, 0.0]])
    one = np.array([0.5])
    render_tubes(maps[0], cam, seg, seg + 1.0, one, one * 0.5, one, 2)
    render_ellipsoids(maps[0], cam, seg, np.ones((1, 3)), np.eye(3)[None])
    polychromatic(maps[1], maps[0], maps[0], maps[0], maps[0], one, one, one, one, one)
