"""The renderer of synthetic chest radiographs: a findings record -> a frontal film.

Images are rendered analytically on a normalised patient grid (x, y in [-1, 1], y down; the
patient's right is on the image left, as on a real frontal film), so every resolution shows the
same anatomy and findings. Tissue is accumulated as a radiographic density D (soft tissue ~1,
aerated lung ~0.2, bone +0.1 to 0.4, metal +1.5) and exposed as 1 - exp(-k D); pathologies act
physically: fluid and consolidation replace lung air, a pneumothorax adds air without vessels.
Every random number of a rendering is drawn before any layer is built, so the same study with
one finding removed differs only where that finding was.

The findings record (`mavilt_jax.data.findings`) is only read here, never built, so this module
does not import ``phantoms``; ``phantoms`` re-exports ``render`` and ``render_with_masks``.

Shape legend: R image side in pixels; all fields are float [R, R] unless stated.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mavilt_jax.data.findings import (
    Atelectasis,
    Edema,
    Effusion,
    Findings,
    Fracture,
    Nodule,
    Opacity,
    Pneumothorax,
)

# The patient's two sides, in the order findings name them and lungs are drawn.
SIDES = ("right", "left")

# Inner thoracic half-width: the lateral lung edge lies at |x| = _TC + _TA.
_TC, _TA = 0.38, 0.46
THORAX_WIDTH = 2 * (_TC + _TA)
_MM = 0.0058  # patient units per millimetre (inner thorax ~ 290 mm)
_FIELD = 64  # side of the periodic noise fields sampled in patient coordinates
_F = np.float32


def _step(z: np.ndarray) -> np.ndarray:
    """Linear 0 -> 1 ramp of unit width around z = 0 (anti-aliased edges)."""
    return np.clip(z + 0.5, 0.0, 1.0)


def _norm(a, b):
    """sqrt(a^2 + b^2); np.hypot is ~10x slower on float32 arrays."""
    return np.sqrt(a * a + b * b)


def _noise_field(rng: np.random.Generator, lo: float, hi: float, n: int = _FIELD) -> np.ndarray:
    """Periodic [n, n] noise with spatial frequencies between lo and hi cycles, unit variance."""
    spec = np.fft.rfft2(rng.standard_normal((n, n)))
    f = _norm(np.fft.fftfreq(n)[:, None] * n, np.fft.rfftfreq(n)[None, :] * n)
    field = np.fft.irfft2(spec * (np.exp(-((f / hi) ** 2)) - np.exp(-((f / lo) ** 2))), s=(n, n))
    return (field / (field.std() + 1e-8)).astype(_F)


def _sample(field: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear, wrapping lookup of a periodic [n, n] field at (u, v) in cells (u: columns)."""
    n = field.shape[0]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    j0, i0 = u0.astype(np.int32) % n, v0.astype(np.int32) % n
    j1, i1 = (j0 + 1) % n, ((i0 + 1) % n) * n
    i0 *= n
    flat = field.ravel()
    a, b, c, d = (np.take(flat, i + j) for i, j in ((i0, j0), (i0, j1), (i1, j0), (i1, j1)))
    top = a + (b - a) * fu
    return top + (c + (d - c) * fu - top) * fv


def _segment_distance(x: np.ndarray, y: np.ndarray, points) -> np.ndarray:
    """Distance from every pixel to a polyline [(x, y), ...]."""
    d = None
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        ex, ey = bx - ax, by - ay
        h = np.clip(((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        di = _norm(x - ax - h * ex, y - ay - h * ey)
        d = di if d is None else np.minimum(d, di)
    return d


@dataclasses.dataclass(frozen=True)
class _Hemithorax:
    """One lung field in lateral coordinates t = s * x (s = -1: patient right, image left)."""

    s: int
    apex: float  # y of the apex
    cpa: float  # y of the costophrenic angle
    dome: float  # y of the top of the hemidiaphragm
    dome_t: float = 0.45

    def cage_sdf(self, t, y):
        """About the signed distance to the inner chest wall (negative inside)."""
        # An ellipse whose upper half is tapered: narrow apex, widest at the costophrenic angle.
        q = np.sqrt(((t - _TC) / _TA) ** 2 + (np.abs(y - self.cpa) / (self.cpa - self.apex)) ** 1.5)
        return np.maximum((q - 1.0) * _TA, 0.08 - t)

    def dome_y(self, t):
        k = (self.cpa + 0.015 - self.dome) / (_TC + _TA - self.dome_t) ** 2
        return self.dome + k * (t - self.dome_t) ** 2

    def lung_sdf(self, t, y):
        return np.maximum(self.cage_sdf(t, y), (y - self.dome_y(t)) * 0.5)


def _half(R: int, s: int) -> slice:
    """Image columns that can hold patient points with s * x > -0.1 (one hemithorax and the
    midline), whatever the acquisition's rotation, shift and scale."""
    return slice(0, int(np.ceil(0.6 * R))) if s < 0 else slice(int(np.floor(0.4 * R)), R)


def _hemithoraces(f: Findings) -> dict[str, _Hemithorax]:
    lift = 0.08 if f.view == "AP" else 0.0  # supine AP films: lower lung volumes
    out = {}
    for side, s, cpa, dome in (("right", -1, 0.38, 0.15), ("left", 1, 0.44, 0.22)):
        if f.atelectasis and f.atelectasis.side in (side, "bilateral"):
            dome -= 0.04  # volume loss lifts the hemidiaphragm
        out[side] = _Hemithorax(s, apex=-0.8 + lift * 0.3, cpa=cpa - lift, dome=dome - lift)
    return out


def _sides(side: str) -> tuple[str, ...]:
    return SIDES if side == "bilateral" else (side,)


def _heart(X, Y, e, ctr: float, thorax: dict[str, _Hemithorax]):
    """Heart mask whose horizontal extent is ctr * THORAX_WIDTH (the cardiothoracic ratio).

    As on a film, 36 % of the width lies right of the midline and the rest left; each border
    bulges out from the mediastinum to its widest point just above the hemidiaphragm and meets
    it there (the cardiophrenic angles). Enlargement is mostly transverse.
    """
    width = ctr * THORAX_WIDTH
    right_w, left_w = 0.36 * width, 0.64 * width
    yr, yl = thorax["right"].dome - 0.04, thorax["left"].dome - 0.03
    hr, hl = 0.32 + 0.3 * (ctr - 0.45), 0.52 + 0.3 * (ctr - 0.45)
    x_right = -right_w * np.sqrt(np.clip(1 - (np.minimum(Y - yr, 0) / hr) ** 2, 0, 1))
    x_left = left_w * np.clip(1 - (np.minimum(Y - yl, 0) / hl) ** 2, 0, 1) ** 0.6
    return _step((X - x_right) / e) * _step((x_left - X) / e) * _step((Y - (yl - hl)) / e)


@dataclasses.dataclass(frozen=True)
class _Scene:
    """What every layer of one rendering shares: patient coordinates and texture fields."""

    X: np.ndarray  # [R, R] patient x (patient's right is negative, on the image left)
    Y: np.ndarray  # [R, R] patient y (down)
    e: float  # edge softness in patient units (about one pixel)
    thorax: dict[str, _Hemithorax]
    lungs: dict[str, np.ndarray]  # [R, R] lung field masks by side
    hila: dict[str, tuple[float, float]]
    fine: np.ndarray  # [R, R] fine reticular texture in [0, 1]
    fine_field: np.ndarray
    patch_field: np.ndarray


def _zone_center(rng: np.random.Generator, h: _Hemithorax, zone: str, base_margin: tuple[float, float]) -> float:
    return {"upper": rng.uniform(-0.56, -0.4), "middle": rng.uniform(-0.3, -0.14),
            "lower": h.dome - rng.uniform(*base_margin)}[zone]


def _effusion(sc: _Scene, eff: Effusion, masks: dict) -> tuple[np.ndarray, np.ndarray]:
    """Dependent fluid with a meniscus that climbs the lateral chest wall: (replace, density)."""
    level = {"small": 0.12, "moderate": 0.3, "large": 0.55}[eff.size]
    total = np.zeros_like(sc.X)
    for side in _sides(eff.side):
        h = sc.thorax[side]
        t = h.s * sc.X
        lateral = np.clip((t - 0.1) / 0.74, 0, 1) ** 2
        surface = h.cpa - level * (h.cpa - h.apex) - 0.2 * (0.4 + level) * lateral
        fluid = _step((sc.Y - surface) / 0.035) * _step(-h.cage_sdf(t, sc.Y) / sc.e)
        masks[f"effusion_{side}"] = fluid
        total = np.maximum(total, fluid * (0.85 + 0.15 * np.clip((sc.Y - surface) / 0.15, 0, 1)))
    total *= 0.75 if eff.hedged else 1.0
    return total, 0.15 * total


def _pneumothorax(sc: _Scene, ptx: Pneumothorax, masks: dict) -> tuple[np.ndarray, np.ndarray]:
    """Pleural air around a retracted lung with a visible visceral pleural line: (replace, density)."""
    h, lung = sc.thorax[ptx.side], sc.lungs[ptx.side]
    t = h.s * sc.X
    k = 1.0 - {"small": 0.07, "moderate": 0.15, "large": 0.3}[ptx.size]
    # The lateral and apical parts retract by k; the hilum and the base stay attached.
    at, ay = 0.14, h.dome
    tt = at + np.maximum(t - at, 0) / k + np.minimum(t - at, 0)
    yy = ay + np.minimum(sc.Y - ay, 0) / k + np.maximum(sc.Y - ay, 0)
    shrunk_sdf = k * h.lung_sdf(tt, yy)
    shrunk = _step(-shrunk_sdf / sc.e)
    masks["pneumothorax"] = lung * (1 - shrunk)
    pleura = 0.16 * np.exp(-((shrunk_sdf / (0.7 * sc.e + 0.003)) ** 2)) * lung
    return 0.5 * (1 - k) * shrunk * lung, pleura  # the collapsed lung holds less air


def _opacity(sc: _Scene, op: Opacity, rng: np.random.Generator, masks: dict) -> np.ndarray:
    """Patchy opacity, or dense consolidation with air bronchograms: replace."""
    total = np.zeros_like(sc.X)
    for side in _sides(op.side):
        h = sc.thorax[side]
        tc = rng.uniform(0.4, 0.62)
        yc = _zone_center(rng, h, op.zone, (0.1, 0.16))
        sx, sy = rng.uniform(0.15, 0.21), rng.uniform(0.11, 0.15)
        total = np.maximum(total, np.exp(-(((h.s * sc.X - tc) / sx) ** 2 + ((sc.Y - yc) / sy) ** 2)))
    dense = op.kind == "consolidation"
    amp = (0.95 if dense else 0.65) * (0.6 if op.hedged else 1.0)
    out = np.clip(total * (0.7 + 0.3 * _sample(sc.patch_field, sc.X * 10, sc.Y * 10)) * 1.8, 0, 1) * amp
    if dense:  # air bronchograms: branching lucencies inside the consolidation
        bronchi = np.exp(-((_sample(sc.fine_field, sc.X * 18 + 7, sc.Y * 18) / 0.18) ** 2))
        out *= 1.0 - 0.35 * bronchi * _step((total - 0.5) / 0.1)
    masks["opacity"] = out
    return out


def _nodule(sc: _Scene, nod: Nodule, rng: np.random.Generator, masks: dict) -> tuple[np.ndarray, np.ndarray]:
    """A round nodule, or a lobulated mass, of the recorded size: (replace, density)."""
    h = sc.thorax[nod.side]
    tc = rng.uniform(0.38, 0.6)
    yc = _zone_center(rng, h, nod.zone, (0.14, 0.2))
    rad = nod.size_mm / 2 * _MM
    t = h.s * sc.X
    rho, ang = _norm(t - tc, sc.Y - yc), np.arctan2(sc.Y - yc, t - tc)
    if nod.kind == "mass":
        rad = rad * (1 + 0.1 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.05 * np.sin(5 * ang))
    mask = _step((rad - rho) / (sc.e + 0.004)) * (0.6 if nod.hedged else 1.0)
    masks["nodule"] = mask
    return 0.9 * mask, 0.12 * mask * np.sqrt(np.clip(1 - (rho / rad) ** 2, 0, 1))


def _edema(sc: _Scene, ed: Edema, masks: dict) -> tuple[np.ndarray, np.ndarray]:
    """Perihilar ("bat wing") haze with interstitial texture: (replace, perihilar weight)."""
    amp = {"mild": 0.4, "moderate": 0.6}[ed.severity] * (0.75 if ed.hedged else 1.0)
    w = sum(np.exp(-((_norm(sc.X - hx, sc.Y - hy) / 0.42) ** 2)) for hx, hy in sc.hila.values())
    out = np.clip(amp * w * (0.85 + 0.15 * sc.fine) + 0.1 * amp * sc.fine, 0, 1)
    masks["edema"] = out
    return out, np.clip(w, 0, 1)


def _atelectasis(sc: _Scene, atel: Atelectasis, rng: np.random.Generator, masks: dict) -> np.ndarray:
    """Plate-like (discoid) bands above the hemidiaphragm: replace."""
    total = np.zeros_like(sc.X)
    for side in _sides(atel.side):
        h = sc.thorax[side]
        t = h.s * sc.X
        for _ in range(1 + int(rng.random() < 0.5)):
            y0, slope = h.dome - rng.uniform(0.07, 0.18), rng.uniform(-0.12, 0.12)
            band = np.exp(-(((sc.Y - y0 - slope * (t - 0.5)) / 0.013) ** 2))
            total = np.maximum(total, band * _step((t - 0.28) / 0.05) * _step((0.78 - t) / 0.05))
    out = total * (0.6 if atel.hedged else 0.95)
    masks["atelectasis"] = out
    return out


def render_with_masks(findings: Findings, resolution: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``render`` plus float [R, R] masks of anatomy and findings (used by tests and overlays)."""
    f, R = findings, int(resolution)
    # Every random number is drawn up front in a fixed order, so removing one finding from a
    # study changes nothing else in its picture.
    theta = np.deg2rad(rng.uniform(-3.0, 3.0))
    dx, dy = rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.05)
    scale = rng.uniform(0.92, 1.02)
    exposure, gamma = rng.uniform(1.25, 1.6), rng.uniform(0.9, 1.2)
    breast = rng.uniform(0.0, 0.3)
    vessel_field, fine_field, patch_field = (_noise_field(rng, lo, hi) for lo, hi in ((3, 9), (6, 14), (2, 6)))
    finding_rngs = [np.random.default_rng(int(s)) for s in rng.integers(0, 2**31, size=8)]
    quantum = rng.standard_normal((R, R)).astype(_F)
    heel = rng.uniform(-0.06, 0.06, size=2)  # anode heel effect: a slight exposure gradient

    # Acquisition: the patient grid is rotated, shifted and scaled under the detector.
    c = ((np.arange(R, dtype=_F) + 0.5) / R * 2.0 - 1.0).astype(_F)
    U, V = np.meshgrid(c, c)
    X = ((np.cos(theta) * (U - dx) + np.sin(theta) * (V - dy)) / scale).astype(_F)
    Y = ((-np.sin(theta) * (U - dx) + np.cos(theta) * (V - dy)) / scale).astype(_F)
    e = _F(1.2 / R / scale)
    ap = f.view == "AP"
    AX = np.abs(X)

    # Soft tissue: neck and sloping shoulders at the top, thickest in the middle.
    neck = _step((0.22 - AX) / 0.02)
    top = -1.3 * neck + (1 - neck) * (-0.93 + 0.2 * np.clip((AX - 0.22) / 0.75, 0, 1) ** 2)
    half_width = 0.95 - 0.1 * ((Y - 0.1) / 1.1) ** 2
    body = _step((Y - top) / 0.01) * _step((half_width - AX) / 0.01)
    D = body * np.clip(1.0 - (X / half_width) ** 2, 0.0, 1.0) ** 0.35

    # Lungs: aerated depth, and vessels branching out of each hilum.
    thorax = _hemithoraces(f)
    masks: dict[str, np.ndarray] = {}
    air, vessels = np.zeros_like(X), np.zeros_like(X)
    fine = np.exp(-((_sample(fine_field, X * 40, Y * 40) / 0.3) ** 2))
    hila = {}
    for side, h in thorax.items():
        cols = _half(R, h.s)  # everything of this lung lies in these columns
        x, y = X[:, cols], Y[:, cols]
        sdf = h.lung_sdf(h.s * x, y)
        lung = _step(-sdf / e)
        masks[f"lung_{side}"] = np.zeros_like(X)
        masks[f"lung_{side}"][:, cols] = lung
        depth = np.sqrt(np.clip(-sdf * 5.0, 0.0, 1.0)) * (1.0 - breast * np.clip((y + 0.1) / 0.5, 0, 1))
        air[:, cols] += lung * (0.5 + 0.25 * depth)
        hx, hy = h.s * 0.19, -0.2 if side == "left" else -0.16
        hila[side] = (hx, hy)
        rho, ang = _norm(x - hx, y - hy), np.arctan2(y - hy, x - hx)
        # Noise stretched along the radius gives radial ridges: trunks and finer branches.
        lr = np.log(rho + 0.05)
        trunk = _sample(vessel_field, ang * (0.6 * _FIELD / np.pi), lr * 6.0)
        branch = _sample(vessel_field, ang * (1.3 * _FIELD / np.pi) + 17.0, lr * 11.0 + 5.0)
        near = np.exp(-rho / 0.3) * (1.0 - np.exp(-((rho / 0.1) ** 2)))
        ridges = np.exp(-((trunk / (0.18 + 0.3 * near)) ** 2)) + 0.6 * np.exp(-((branch / 0.2) ** 2))
        vessels[:, cols] += lung * (ridges * (0.08 + 0.8 * near) + 0.1 * fine[:, cols] * (0.3 + near))
        D[:, cols] += 0.3 * np.exp(-((rho / 0.075) ** 2))  # hilar vessels

    # Mediastinum and heart displace the medial lung.
    heart = _heart(X, Y, e, f.ctr, thorax)
    masks["heart"] = heart
    half = f.widened_mediastinum.half_width if f.widened_mediastinum else 0.1
    width = half + 0.05 * np.clip((Y + 0.6) / 0.5, 0, 1)
    upper = _step((width - np.abs(X - 0.01)) / e) * _step((0.1 - Y) / 0.05)
    masks["mediastinum"] = upper
    knob = _step((0.07 - _norm(X - 0.11, Y + 0.44)) / e)
    mediastinum = np.maximum(np.maximum(heart, upper), knob)
    D += 0.06 * mediastinum
    air *= 1.0 - mediastinum

    # Findings: fluid and tissue replace lung air; some add density of their own.
    sc = _Scene(X, Y, e, thorax, {s: masks[f"lung_{s}"] for s in SIDES}, hila, fine, fine_field, patch_field)
    replace = np.zeros_like(X)
    ptx = np.zeros_like(X)
    if f.effusion:
        rep, dens = _effusion(sc, f.effusion, masks)
        replace, D = np.maximum(replace, rep), D + dens
    if f.pneumothorax:
        rep, dens = _pneumothorax(sc, f.pneumothorax, masks)
        replace, D, ptx = np.maximum(replace, rep), D + dens, masks["pneumothorax"]
    if f.opacity:
        replace = np.maximum(replace, _opacity(sc, f.opacity, finding_rngs[0], masks))
    if f.nodule:
        rep, dens = _nodule(sc, f.nodule, finding_rngs[1], masks)
        replace, D = np.maximum(replace, rep), D + dens
    if f.edema:
        rep, perihilar = _edema(sc, f.edema, masks)
        replace = np.maximum(replace, rep)
        vessels *= 1.0 - 0.5 * perihilar  # indistinct vessels
    if f.atelectasis:
        replace = np.maximum(replace, _atelectasis(sc, f.atelectasis, finding_rngs[2], masks))

    D -= 0.85 * air * (1.0 - np.clip(replace, 0, 1))
    markings = 0.3 * vessels * (1.0 - ptx) * (1.0 - replace) * (1.0 - mediastinum)
    masks["markings"] = markings
    D += markings
    D -= 0.08 * ptx * (1.0 - mediastinum)  # pleural air without vessels
    gas = _step((1.0 - _norm((X - 0.42) / 0.11, (Y - thorax["left"].dome - 0.11) / 0.06)) * 3.0)
    D -= 0.3 * gas * body  # gastric bubble under the left hemidiaphragm
    D = _bones_and_airway(D, X, Y, e, ap, thorax, body, f.fracture, masks)
    D = _devices(D, X, Y, e, f.devices, masks)

    # Exposure, detector response and noise.
    P = 1.0 - np.exp(-exposure * np.maximum(D, 0.0))
    P = np.clip((P - 0.04) / 0.94, 0, 1) ** gamma
    P = P * (1.0 + heel[0] * U + heel[1] * V) + (0.012 + 0.008 * ap) * quantum
    image = np.clip(P * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return image, masks


def _bones_and_airway(D, X, Y, e, ap: bool, thorax: dict[str, _Hemithorax], body: np.ndarray,
                      fracture: Fracture | None, masks: dict):
    """Spine, trachea, clavicles, ribs (one possibly fractured) and the scapulae."""
    AX = np.abs(X)
    spine = _step((0.075 - AX) / e)
    endplates = np.cos(np.pi * (Y + 1) / 0.085) ** 8
    pedicles = np.exp(-(((AX - 0.05) / 0.015) ** 2 + ((np.mod(Y + 1, 0.085) - 0.03) / 0.015) ** 2))
    D = D + spine * (0.22 + 0.1 * endplates + 0.1 * pedicles)
    trachea = _step((0.03 + 0.005 * Y - AX) / e) * _step((-0.3 - Y) / e)
    bronchi = sum(_step((0.018 - _segment_distance(X, Y, [(0.0, -0.3), (s * 0.16, -0.17)])) / e) for s in (-1, 1))
    D -= 0.22 * np.clip(trachea + bronchi, 0, 1)
    lift = -0.07 if ap else 0.0
    for s in (-1, 1):
        h = thorax["right" if s < 0 else "left"]
        cols = _half(X.shape[1], s)
        x, y, D_side = X[:, cols], Y[:, cols], D[:, cols]  # views: D is updated in place
        t = s * x
        pts = [(s * 0.08, -0.63 + lift), (s * 0.3, -0.67 + lift), (s * 0.5, -0.69 + lift), (s * 0.74, (-0.72 if ap else -0.8) + lift)]
        dist = _segment_distance(x, y, pts)
        width = 0.026 + 0.008 * np.clip(1 - np.abs(t - 0.4) / 0.35, 0, 1)
        D_side += _step((width - dist) / e) * (0.25 + 0.15 * _step((dist - width + 0.008) / e))
        cage = _step((0.06 - h.cage_sdf(t, y)) / 0.03) * _step((t - 0.06) / 0.03)
        # Posterior ribs arch up from the spine and run down laterally; spacing widens caudally.
        phi = (y + 0.9 + 0.12 * t - 1.1 * np.maximum(t - 0.3, 0) ** 2) / 0.1
        phi = phi - 0.015 * phi**2
        site = None
        if fracture is not None and (s < 0) == (fracture.side == "right"):
            # The fracture site: lateral on the rib's arc; phi counts ribs from the first.
            site = _step((0.012 - np.abs(t - 0.66)) / e) * _step((0.6 - np.abs(phi - fracture.rib + 0.7)) / 0.05)
            if not fracture.healed:  # the lateral fragment is displaced by a third of a rib
                phi = phi - 0.3 * _step((t - 0.66) / e) * _step((0.6 - np.abs(phi - fracture.rib + 0.7)) / 0.05)
        frac = phi - np.floor(phi)
        band = _step((0.32 - np.abs(frac - 0.2)) * 0.1 / e - 0.5) * _step((frac - 0.0) * 0.1 / e)
        cortex = np.exp(-(((frac - 0.5) * 0.1 / 0.006) ** 2)) + np.exp(-(((frac + 0.0 - 0.02) * 0.1 / 0.006) ** 2))
        ribs = (0.1 * band + 0.07 * cortex) * cage * _step(phi / 0.3) * _step((11.0 - phi) / 0.3)
        if site is not None:
            mask = np.zeros_like(X)
            if fracture.healed:  # callus: a bony bulge around the old break
                callus = (np.exp(-(((t - 0.66) / 0.03) ** 2 + ((frac - 0.2) * 0.1 / 0.03) ** 2))
                          * _step((0.6 - np.abs(phi - fracture.rib + 0.7)) / 0.05))
                ribs = ribs + 0.12 * callus
                mask[:, cols] = callus
            else:  # a lucent gap through the cortex
                ribs = ribs * (1.0 - site)
                mask[:, cols] = site
            masks["fracture"] = mask
        # Anterior ribs: faint, sloping down medially.
        phia = (y + 1.0 - 0.4 * (0.9 - t)) / 0.17
        fa = phia - np.floor(phia)
        ribs += 0.045 * _step((0.25 - np.abs(fa - 0.3)) * 0.17 / e) * cage * _step((t - 0.2) / 0.05) * _step(phia) * _step(5.5 - phia)
        D_side += ribs
        sc_t = 0.78 if ap else 0.96
        scap = _step((1.0 - _norm((t - sc_t) / 0.15, (y + 0.45) / 0.35)) * 0.15 / (2 * e))
        D_side += 0.12 * scap * body[:, cols]
    return D


_DEVICE_PATHS = {
    "endotracheal tube": [(0.0, -1.1), (0.0, -0.46)],
    "central venous catheter": [(-0.34, -1.1), (-0.22, -0.76), (-0.1, -0.5), (-0.07, -0.22)],
    "nasogastric tube": [(0.03, -1.1), (0.03, -0.35), (0.08, 0.2), (0.32, 0.5), (0.46, 0.46)],
    "pacemaker": [(0.5, -0.6), (0.22, -0.48), (-0.04, -0.3), (-0.03, 0.0), (0.1, 0.14)],
}


def _devices(D, X, Y, e, devices: tuple[str, ...], masks: dict[str, np.ndarray]):
    """Radiopaque tubes, catheters and a pacemaker with its lead."""
    total = np.zeros_like(X)
    for name in devices:
        dist = _segment_distance(X, Y, _DEVICE_PATHS[name])
        if name == "endotracheal tube":  # faint walls and a radiopaque stripe
            line = 0.4 * _step((0.005 - np.abs(dist - 0.02)) / e) + _step((0.006 - np.abs(X - 0.008)) / e) * _step((0.022 - dist) / e)
        elif name == "pacemaker":
            box = _step((0.075 - np.abs(X - 0.56)) / e) * _step((0.05 - np.abs(Y + 0.64)) / e)
            line = np.maximum(1.6 * box, _step((0.006 - dist) / e))
        else:
            line = _step(((0.006 if name == "central venous catheter" else 0.009) - dist) / e)
        total = np.maximum(total, line)
    masks["devices"] = np.clip(total, 0, 1)
    return D + 1.5 * total


def render(findings: Findings, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """A frontal radiograph of ``findings``: uint8 [R, R], R = ``resolution``."""
    return render_with_masks(findings, resolution, rng)[0]
