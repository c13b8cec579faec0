"""FractalDB-style formula-driven supervised pretraining images.

Each class is a random iterated function system (IFS): 2-4 contractive affine maps
``(x, y) -> (a x + b y + e, c x + d y + f)`` chosen with probabilities proportional
to ``|ad - bc|``. Images are rendered with the chaos game, run for many independent
walkers in parallel (numpy, vectorised over walkers and over all images of a class).

Like FractalDB (Kataoka et al., 2020) a candidate system is kept only if its
rendered attractor covers a reasonable fraction of the canvas (the "filling rate"
filter), and the instances of a class differ by a small multiplicative
perturbation of one parameter of one map. On top of that each instance gets a
random palette, a random horizontal flip and a random point count.

Systems are returned as ``float64`` arrays of shape ``(k, 7)``, one row per map:
``[a, b, c, d, e, f, p]``.
"""

from __future__ import annotations

import zlib

import numpy as np

from . import _draw

__all__ = ["sample_ifs_systems", "render_fractal_dataset", "render_ifs"]

_MAX_MAPS = 4
#: Largest singular value allowed for a map's linear part (keeps the chaos game
#: converging fast: 0.9**24 < 0.08 after burn-in).
_MAX_SINGULAR = 0.9
_BURN_IN = 24
_WALKERS = 128
#: Points rendered per image, per pixel of canvas (FractalDB uses ~100k points at 362 px).
_POINTS_PER_PIXEL = 4.0
#: Accept a system when this fraction of the canvas is covered (attractor scaled to fit).
_FILL_RANGE = (0.18, 0.75)
_MARGIN = 0.06  # fraction of the canvas left empty on each side
_PERTURB = (0.85, 1.15)  # intra-class multiplicative perturbation of one parameter


def _stream(seed: int, tag: str, *extra: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), zlib.crc32(tag.encode("utf-8")), *extra])


def _spectral_norms(lin: np.ndarray) -> np.ndarray:
    """Largest singular value of each ``[..., 2, 2]`` matrix given as ``[..., 4]`` (a, b, c, d)."""
    a, b, c, d = lin[..., 0], lin[..., 1], lin[..., 2], lin[..., 3]
    s1 = a * a + b * b + c * c + d * d
    det = a * d - b * c
    disc = np.sqrt(np.maximum(s1 * s1 - 4 * det * det, 0.0))
    return np.sqrt((s1 + disc) / 2.0)


def _random_map(rng: np.random.Generator) -> np.ndarray:
    """One contractive affine map [a, b, c, d, e, f], parameters uniform in [-1, 1]."""
    while True:
        m = rng.uniform(-1.0, 1.0, size=6)
        if _spectral_norms(m[:4]) < _MAX_SINGULAR:
            return m


def _with_probs(maps: np.ndarray) -> np.ndarray:
    det = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    det = np.maximum(det, 1e-3)  # a degenerate map still gets a little mass
    return np.concatenate([maps, (det / det.sum())[:, None]], axis=1)


def _pad(systems: list[np.ndarray]) -> np.ndarray:
    """Stack (k, 7) systems into (B, 4, 7), padding with zero-probability maps."""
    out = np.zeros((len(systems), _MAX_MAPS, 7))
    for i, s in enumerate(systems):
        out[i, : len(s)] = s
    return out


def _chaos_game(params: np.ndarray, n_points: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Run the chaos game for a batch of systems.

    ``params``: (B, 4, 7). Returns points (B, N, 2) and the map index that produced
    each point (B, N), N = ceil(n_points / walkers) * walkers, ordered step-major.
    """
    bsz = params.shape[0]
    steps = -(-n_points // _WALKERS)
    cum = np.cumsum(params[:, :, 6], axis=1)
    cum = cum / cum[:, -1:]
    cum[:, -1] = 1.0 + 1e-9
    xy = rng.uniform(-1.0, 1.0, size=(bsz, _WALKERS, 2))
    pts = np.empty((bsz, steps, _WALKERS, 2))
    ids = np.empty((bsz, steps, _WALKERS), dtype=np.int64)
    rows = np.arange(bsz)[:, None]
    for t in range(_BURN_IN + steps):
        u = rng.random((bsz, _WALKERS))
        idx = (u[:, :, None] >= cum[:, None, :]).sum(axis=2)
        idx = np.minimum(idx, _MAX_MAPS - 1)
        m = params[rows, idx]  # (B, W, 7)
        x, y = xy[..., 0], xy[..., 1]
        nx = m[..., 0] * x + m[..., 1] * y + m[..., 4]
        ny = m[..., 2] * x + m[..., 3] * y + m[..., 5]
        xy = np.stack([nx, ny], axis=-1)
        if t >= _BURN_IN:
            pts[:, t - _BURN_IN] = xy
            ids[:, t - _BURN_IN] = idx
    return pts.reshape(bsz, -1, 2), ids.reshape(bsz, -1)


def _to_pixels(pts: np.ndarray, size: int) -> np.ndarray:
    """Scale each image's points (B, N, 2) to fit the canvas (aspect kept, centred).

    Returns integer pixel coordinates (B, N, 2) as (col, row); points outside the
    robust bounding box may fall off the canvas (callers mask them)."""
    lo = np.percentile(pts, 0.5, axis=1)  # (B, 2)
    hi = np.percentile(pts, 99.5, axis=1)
    centre = (lo + hi) / 2.0
    extent = np.maximum((hi - lo).max(axis=1), 1e-12)  # (B,)
    usable = size * (1.0 - 2 * _MARGIN)
    scale = (usable / extent)[:, None, None]
    pix = (pts - centre[:, None, :]) * scale + size / 2.0
    pix[..., 1] = size - pix[..., 1]  # y up in the IFS plane -> row index down
    return np.floor(pix).astype(np.int64)


def _fill_rates(params: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    pts, _ = _chaos_game(params, int(_POINTS_PER_PIXEL * size * size), rng)
    pix = _to_pixels(pts, size)
    ok = (pix >= 0).all(-1) & (pix < size).all(-1)
    bsz = params.shape[0]
    flat = (np.arange(bsz)[:, None] * size * size + pix[..., 1] * size + pix[..., 0])[ok]
    counts = np.bincount(flat, minlength=bsz * size * size).reshape(bsz, -1)
    finite = np.isfinite(pts).all(axis=(1, 2))
    return np.where(finite, (counts > 0).mean(axis=1), 0.0)


def sample_ifs_systems(num_classes: int, *, seed: int, image_size: int = 32) -> list[np.ndarray]:
    """Random iterated-function systems (2-4 affine maps each, with sampling probabilities proportional to |det|),
    kept only if the rendered attractor fills a reasonable fraction of the canvas (FractalDB's 'filling rate' filter).

    Each system is a ``(k, 7)`` float64 array with rows ``[a, b, c, d, e, f, p]``.
    Deterministic in ``seed``; the first ``n`` systems do not depend on ``num_classes``.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    rng = _stream(seed, "fractal-systems")
    lo, hi = _FILL_RANGE
    accepted: list[np.ndarray] = []
    batch = 32
    while len(accepted) < num_classes:
        cands = []
        for _ in range(batch):
            k = int(rng.integers(2, _MAX_MAPS + 1))
            cands.append(_with_probs(np.stack([_random_map(rng) for _ in range(k)])))
        rates = _fill_rates(_pad(cands), image_size, rng)
        for cand, rate in zip(cands, rates):
            if lo <= rate <= hi and len(accepted) < num_classes:
                accepted.append(cand)
    return accepted


def _perturb(system: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """FractalDB-style intra-class variation: scale one parameter of one map."""
    maps = system[:, :6].copy()
    j = int(rng.integers(len(maps)))
    p = int(rng.integers(6))
    maps[j, p] *= rng.uniform(*_PERTURB)
    norm = _spectral_norms(maps[j, :4])
    if norm >= _MAX_SINGULAR:
        maps[j, :4] *= (_MAX_SINGULAR * 0.999) / norm
    return _with_probs(maps)


def render_ifs(systems: list[np.ndarray], *, rng: np.random.Generator, image_size: int = 32,
               n_points: np.ndarray | None = None, palettes: np.ndarray | None = None
               ) -> np.ndarray:
    """Render each system to an ``[H, W, 3]`` uint8 image on black.

    ``n_points`` (per image) defaults to ``4 * H * W``; ``palettes`` (B, 4, 3) gives
    each map's colour in [0, 1] (defaults to white). Points are coloured by the map
    that produced them; density sets brightness.
    """
    size = int(image_size)
    bsz = len(systems)
    full = int(_POINTS_PER_PIXEL * size * size)
    if n_points is None:
        n_points = np.full(bsz, full)
    n_points = np.asarray(n_points, dtype=np.int64)
    if palettes is None:
        palettes = np.ones((bsz, _MAX_MAPS, 3))
    pts, ids = _chaos_game(_pad(systems), int(n_points.max()), rng)
    pix = _to_pixels(pts, size)
    keep = (pix >= 0).all(-1) & (pix < size).all(-1)
    keep &= np.arange(pts.shape[1])[None, :] < n_points[:, None]
    flat = (np.arange(bsz)[:, None] * size * size + pix[..., 1] * size + pix[..., 0])[keep]
    cols = palettes[np.arange(bsz)[:, None], ids][keep]  # (M, 3)
    nbin = bsz * size * size
    counts = np.bincount(flat, minlength=nbin).astype(np.float64)
    rgb = np.stack([np.bincount(flat, weights=cols[:, ch], minlength=nbin) for ch in range(3)], axis=1)
    mean_col = rgb / np.maximum(counts, 1.0)[:, None]
    # Density -> brightness; normalise by the expected density so the point count
    # changes texture (sparser / denser), not just overall brightness.
    tau = 0.6 * n_points.astype(np.float64) / full
    dens = counts.reshape(bsz, -1) / tau[:, None]
    bright = 1.0 - np.exp(-dens.reshape(-1))
    img = (mean_col * bright[:, None]).reshape(bsz, size, size, 3)
    return _draw.to_uint8(img)


def render_fractal_dataset(num_classes: int, images_per_class: int, *, seed: int, image_size: int = 32
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, H, W, 3], labels int64 [N]). Each class is one IFS system; instances vary by
    small perturbation of one map's parameters (FractalDB's intra-class variation), random colour, flip, and point count.

    Images are ordered class by class (``labels = repeat(arange(num_classes), images_per_class)``).
    Deterministic in ``seed``; class ``c``'s images depend only on ``(seed, c, images_per_class, image_size)``.
    """
    if images_per_class < 0:
        raise ValueError(f"images_per_class must be >= 0, got {images_per_class}")
    size = int(image_size)
    systems = sample_ifs_systems(num_classes, seed=seed, image_size=size)
    full = int(_POINTS_PER_PIXEL * size * size)
    images = np.empty((num_classes * images_per_class, size, size, 3), dtype=np.uint8)
    for c, system in enumerate(systems):
        rng = _stream(seed, "fractal-render", c)
        inst = [system] + [_perturb(system, rng) for _ in range(images_per_class - 1)]
        inst = inst[:images_per_class]
        n_pts = rng.integers(full // 2, full + 1, size=images_per_class)
        palettes = np.stack([
            np.stack([_draw.random_colour(rng, (0.35, 1.0)) for _ in range(_MAX_MAPS)])
            for _ in range(images_per_class)
        ]) if images_per_class else np.zeros((0, _MAX_MAPS, 3))
        flips = rng.random(images_per_class) < 0.5
        if images_per_class == 0:
            continue
        imgs = render_ifs(inst, rng=rng, image_size=size, n_points=n_pts, palettes=palettes)
        imgs[flips] = imgs[flips][:, :, ::-1]
        images[c * images_per_class:(c + 1) * images_per_class] = imgs
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), images_per_class)
    return images, labels
