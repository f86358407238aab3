"""Angular resolution of a rotating LiDAR, measured from one sweep's points.

Geometry defaults that hold on any scanner are written in units of the scanner's own angular spacing
rather than in degrees (a 32-beam sensor's beams are 1.33 deg apart, a 64-beam's 1/3 to 1/2 deg, a
128-beam's 0.35 deg). :func:`measure_scan` measures it from a sweep in the sensor frame:

- **vertical**, as a function of elevation (non-uniform sensors such as the HDL-64E have a 1/3 deg
  upper and a ~1/2 deg lower block). With ring ids (the nuScenes ``.pcd.bin`` 5th column): each
  ring's median elevation is its beam's elevation, and the spacing at a beam is the *local median*
  of the (up to) four gaps between consecutive beams around it, so a beam missing from the sweep
  (no return: sky) changes it little. Without ring ids: the *local period* of the elevation histogram
  (every beam fires at one elevation, so its returns pile up there): in windows of at least 5 deg (or
  4 spacings) every 0.5 deg, the lag of the highest autocorrelation peak, then a running median over
  5 windows. The period is robust where peak picking is not: ego-motion compensation (nuScenes) smears
  near returns' elevations by up to a few degrees into secondary bumps, but the beams' sharp cores
  still repeat at the beam spacing.
- **horizontal**: the azimuth step, the median gap between consecutive returns of one beam (over the
  4 most populated beams), so dropped returns (gaps of two steps) do not move it.

:meth:`ScanResolution.spacing` gives each point's angular spacing -- "one beam" -- as the larger of
the vertical spacing at its elevation and the azimuth step: the largest angle between a return and
its neighbours in the range image. Stages express their footprints and link distances in it
(``associate.footprint_beams``, ``presegment.fast.range_components.link_beams``, ...), so that one
default holds for 32, 64 and 128 beams.

Frames: points in the sensor (lidar) frame, z up; elevation ``atan2(z, hypot(x, y))``, azimuth
``atan2(y, x)``; angles in radians.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Elevation histogram bin (deg), the closest beam spacing measured (deg), the autocorrelation window
#: (deg, at least; 4 spacings on coarse sensors) and its step (deg).
_BIN_DEG = 0.01
_MIN_SPACING_DEG = 0.1
_WINDOW_DEG = 5.0
_WINDOW_STEP_DEG = 0.5
#: A window's autocorrelation peak must rise this much (share of lag 0) to count as a beam period, and
#: the median window twice that (measured: 0.25-0.55 on the three presets' sweeps, 0.005 on a random cloud).
_MIN_PROMINENCE = 0.05
#: Share of the windows whose period lies within 10% of the running median of 5 windows.
_MIN_AGREEMENT = 0.9
#: Points nearer than this (m, horizontal) are left out of the measurement (ego returns, blur).
_MIN_RANGE_M = 2.0
#: At most this many points enter the elevation measurement (a strided subsample of larger sweeps).
_MAX_SAMPLE = 40000


class ScanError(ValueError):
    """The sweep does not show a LiDAR's beam structure (too few points or beams to measure)."""


@dataclass(frozen=True)
class ScanResolution:
    """Measured angular resolution of a sweep.

    elevation: (K,) float64 rad, ascending; vertical: (K,) float64 rad, the vertical beam spacing at
    those elevations (the beams' elevations and local spacings when measured from ring ids, the
    histogram windows' centres and local periods otherwise); azimuth_step: rad; beams: beams seen (ring
    ids) or the elevation span over the mean spacing, plus one (histogram); source: 'ring',
    'histogram' or 'given' (:meth:`uniform`).
    """

    elevation: np.ndarray
    vertical: np.ndarray
    azimuth_step: float
    beams: int
    source: str = "given"

    @classmethod
    def uniform(cls, beams: int, lowest_deg: float, highest_deg: float, azimuth_steps: int) -> "ScanResolution":
        """The resolution of a sensor with ``beams`` uniformly spaced beams and ``azimuth_steps`` firings
        per revolution (for hand-built point sets without a beam structure, and for tests)."""
        el = np.radians(np.linspace(lowest_deg, highest_deg, beams))
        gap = math.radians((highest_deg - lowest_deg) / max(beams - 1, 1))
        return cls(el, np.full(beams, gap), 2 * math.pi / azimuth_steps, beams, "given")

    @property
    def median_vertical_spacing(self) -> float:
        """Median vertical spacing (rad) over the elevations: one number for reports."""
        return float(np.median(self.vertical))

    def vertical_spacing(self, elevation: np.ndarray) -> np.ndarray:
        """(N,) float64 rad vertical spacing at elevations (N,) rad (linear between the measured
        elevations, constant beyond them)."""
        return np.interp(np.asarray(elevation, np.float64), self.elevation, self.vertical)

    def beam_index(self, elevation: np.ndarray) -> np.ndarray:
        """(N,) float64 continuous beam index at elevations (N,) rad: the integral of one over the vertical
        spacing from the lowest measured elevation, so neighbouring beams lie one apart wherever the
        spacing changes (an HDL-64E's two blocks) -- the row coordinate of a range image. Beyond the
        measured elevations the spacing is held constant."""
        el = np.asarray(elevation, np.float64)
        if el.size == 0:
            return np.zeros(0)
        lo = min(float(el.min()), float(self.elevation[0])) - 1e-6
        hi = max(float(el.max()), float(self.elevation[-1])) + 1e-6
        grid = np.unique(np.concatenate([np.linspace(lo, hi, 1025), self.elevation[(self.elevation > lo) & (self.elevation < hi)]]))
        inv = 1.0 / self.vertical_spacing(grid)
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (inv[1:] + inv[:-1]) * np.diff(grid))])
        return np.interp(el, grid, cum)

    def spacing(self, xyz: np.ndarray) -> np.ndarray:
        """(N,) float64 rad: each point's angular spacing ("one beam"), the larger of the vertical
        spacing at its elevation and the azimuth step. ``xyz`` (N, >=3) sensor frame."""
        xyz = np.asarray(xyz)
        el = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
        return np.maximum(self.vertical_spacing(el), self.azimuth_step)

    def spacing_hv(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 2) float64 rad: each point's angular spacing along the scan line (the azimuth step) and
        across the scan lines (the vertical spacing at its elevation): the gaps to its neighbours in the
        range image, apart. ``xyz`` (N, >=3) sensor frame."""
        xyz = np.asarray(xyz)
        el = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
        return np.column_stack([np.full(len(xyz), self.azimuth_step), self.vertical_spacing(el)])

    def summary(self) -> dict[str, float | int | str]:
        """Plain numbers for metrics and logs (degrees)."""
        return {"source": self.source, "beams": int(self.beams),
                "vertical_spacing_deg_median": round(math.degrees(self.median_vertical_spacing), 4),
                "vertical_spacing_deg_min": round(math.degrees(float(self.vertical.min())), 4),
                "vertical_spacing_deg_max": round(math.degrees(float(self.vertical.max())), 4),
                "azimuth_step_deg": round(math.degrees(self.azimuth_step), 4)}


def local_spacing(beam_elevation: np.ndarray) -> np.ndarray:
    """(B,) local vertical spacing of ascending beam elevations (B,): the median of the gaps between
    consecutive beams from two below to two above each beam (four gaps inside, fewer at the ends)."""
    gaps = np.diff(np.asarray(beam_elevation, np.float64))
    b = len(beam_elevation)
    return np.array([np.median(gaps[max(0, i - 2):min(b - 1, i + 2)]) for i in range(b)])


def _ring_elevations(el: np.ndarray, ring: np.ndarray, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    """(ring ids (R,), median elevation (R,)) of the rings with at least ``min_points`` points."""
    order = np.lexsort((el, ring))
    r_sorted, e_sorted = ring[order], el[order]
    starts = np.flatnonzero(np.r_[True, r_sorted[1:] != r_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(r_sorted)])
    keep = counts >= min_points
    med = e_sorted[starts + counts // 2]
    return r_sorted[starts][keep], med[keep]


def _histogram(el: np.ndarray, rho: np.ndarray, pad_deg: float) -> tuple[np.ndarray, float]:
    """(smoothed elevation histogram over bins of ``_BIN_DEG`` from lo, lo (deg)). Returns are weighted
    by ``min(rho, 30 m)^2``: a motion-compensated return's elevation error falls with the square of its
    horizontal range ``rho``, so far returns draw sharp cores and near ones a blurred floor."""
    deg = np.degrees(el)
    lo = float(deg.min()) - pad_deg
    n_bins = int(math.ceil((float(deg.max()) + pad_deg - lo) / _BIN_DEG)) + 1
    hist = np.bincount(((deg - lo) / _BIN_DEG).astype(np.int64), weights=np.minimum(rho, 30.0) ** 2, minlength=n_bins)
    k = np.exp(-0.5 * (np.arange(-6, 7) * _BIN_DEG / 0.02) ** 2)  # sigma 0.02 deg
    return np.convolve(hist, k / k.sum(), mode="same"), lo


def _period(segment: np.ndarray, max_lag: int) -> tuple[float, float]:
    """(lag (bins), prominence) of the highest autocorrelation peak of a histogram segment between
    ``_MIN_SPACING_DEG`` and ``max_lag`` bins (Hann-tapered), or (NaN, 0) when there is none. The
    prominence is the peak's rise over the lowest autocorrelation at smaller lags, over the lag-0 value:
    0.25-0.55 (median) for the beams of real sweeps, 0.005 for a cloud without beams."""
    s = segment * np.hanning(len(segment))
    if not s.any():
        return float("nan"), 0.0
    f = np.fft.rfft(s, 2 * len(s))
    ac = np.fft.irfft(f * np.conj(f))[:max_lag + 2]
    lo = int(round(_MIN_SPACING_DEG / _BIN_DEG))
    seg = ac[lo - 1:max_lag + 2]
    peak = np.flatnonzero((seg[1:-1] > seg[:-2]) & (seg[1:-1] >= seg[2:])) + 1
    if not len(peak):
        return float("nan"), 0.0
    best = peak[np.argmax(seg[peak])]
    prominence = float((seg[best] - seg[:best].min()) / ac[0])
    # parabolic refinement of the peak
    a, b, c = seg[best - 1], seg[best], seg[best + 1]
    den = a - 2 * b + c
    off = 0.5 * (a - c) / den if den < 0 else 0.0
    return float(lo - 1 + best + off), prominence


def _histogram_spacing(el: np.ndarray, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(window centres (K,), vertical spacing (K,)) rad from the local period of the elevation
    histogram (see the module docstring)."""
    span = math.degrees(float(el.max() - el.min()))
    hist, lo = _histogram(el, rho, _WINDOW_DEG)
    # a first, global period sizes the window: at least 4 spacings in it
    body = hist[int(_WINDOW_DEG / _BIN_DEG):-int(_WINDOW_DEG / _BIN_DEG)]
    coarse, prom = _period(body, int(min(span / 2, 10.0) / _BIN_DEG))
    window = max(_WINDOW_DEG, 4 * coarse * _BIN_DEG) if prom >= _MIN_PROMINENCE else _WINDOW_DEG
    wb = int(round(window / _BIN_DEG))
    # windows that lie wholly inside the measured elevations (one at the middle if none does): a window
    # reaching past the field of view holds too few beams and may lock onto the blur
    e0, e1 = math.degrees(float(el.min())) + window / 2, math.degrees(float(el.max())) - window / 2
    centres = np.arange(e0, e1 + 1e-9, _WINDOW_STEP_DEG) if e1 >= e0 else np.array([(e0 + e1) / 2])
    lags = np.full(len(centres), np.nan)
    proms = np.zeros(len(centres))
    for i, c in enumerate(centres):
        a = int(round((c - lo) / _BIN_DEG)) - wb // 2
        seg = hist[max(a, 0):a + wb]
        if len(seg) > 2 * int(_MIN_SPACING_DEG / _BIN_DEG):
            lags[i], proms[i] = _period(seg, len(seg) // 2 - 2)
    if not len(proms) or np.median(proms) < 2 * _MIN_PROMINENCE:
        return np.zeros(0), np.zeros(0)  # no beam structure (a cloud sampled at random)
    ok = np.isfinite(lags) & (proms >= _MIN_PROMINENCE)
    centres, lags = centres[ok], lags[ok]
    if len(lags) >= 5:  # running median over 5 windows: a window at the edge of the field of view may lock onto noise
        padded = np.pad(lags, 2, mode="edge")
        smooth = np.median(np.lib.stride_tricks.sliding_window_view(padded, 5), axis=1)
        # a beam layout's local period changes slowly: the windows agree with their running median
        # (measured: >= 98% of them within 10% on the three presets' sweeps; 76-80% for sparse random clouds)
        if np.mean(np.abs(lags / smooth - 1) <= 0.1) < _MIN_AGREEMENT:
            return np.zeros(0), np.zeros(0)
        lags = smooth
    return np.radians(centres), np.radians(lags * _BIN_DEG)


def _azimuth_step(az: np.ndarray, beam: np.ndarray, n_beams: int) -> float:
    """Median gap (rad) between consecutive returns of one beam, over the (up to) 4 most populated beams
    (``beam`` (N,) index per point, -1 = none)."""
    counts = np.bincount(beam[beam >= 0], minlength=n_beams)
    gaps = []
    for b in np.argsort(counts)[::-1][:4]:
        if counts[b] < 8:
            continue
        a = np.sort(az[beam == b])
        d = np.diff(np.r_[a, a[0] + 2 * math.pi])
        gaps.append(d[d > 1e-7])
    if not gaps:
        return float("nan")
    return float(np.median(np.concatenate(gaps)))


def _strongest_beams(el: np.ndarray, rho: np.ndarray, centres: np.ndarray, vertical: np.ndarray,
                     n: int = 4) -> np.ndarray:
    """(N,) beam index of points within 0.15 spacings of the ``n`` highest histogram maxima that lie
    at least a spacing apart (-1 elsewhere): returns of single beams, for the azimuth step."""
    hist, lo = _histogram(el, rho, 0.2)
    order = np.argsort(hist)[::-1]
    peaks: list[float] = []
    for i in order[:20000]:
        e = math.radians(lo + (i + 0.5) * _BIN_DEG)
        sp = float(np.interp(e, centres, vertical))
        if all(abs(e - q) >= sp for q in peaks):
            peaks.append(e)
            if len(peaks) == n:
                break
    beam = np.full(len(el), -1)
    for k, q in enumerate(peaks):
        beam[np.abs(el - q) <= 0.15 * float(np.interp(q, centres, vertical))] = k
    return beam


def measure_scan(xyz: np.ndarray, ring: np.ndarray | None = None, min_beams: int = 3) -> ScanResolution:
    """Measure the angular resolution of one sweep (see the module docstring).

    ``xyz``: (N, >=3) float sensor frame; ``ring``: (N,) beam ids (any integers, one per beam) or None.
    Ring ids are used when at least ``min_beams`` rings hold 5 or more points (a zero-filled ring column
    falls back to the histogram). Raises :class:`ScanError` when fewer than ``min_beams`` beams (or
    beam spacings) are found, or no azimuth step can be measured.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ScanError(f"points must be (N, 3), got shape {xyz.shape}")
    rho_all = np.hypot(xyz[:, 0], xyz[:, 1])
    use = np.flatnonzero(rho_all >= _MIN_RANGE_M)
    if len(use) < 10 * min_beams:
        raise ScanError(f"cannot measure the LiDAR's angular resolution from {len(use)} points beyond "
                        f"{_MIN_RANGE_M} m horizontally (of {len(xyz)})")
    rho = rho_all[use]
    el = np.arctan2(xyz[use, 2], rho)
    az = np.arctan2(xyz[use, 1], xyz[use, 0])
    stride = max(1, len(use) // _MAX_SAMPLE)
    if ring is not None:
        r = np.asarray(ring)[use].astype(np.int64)
        ids, med = _ring_elevations(el[::stride], r[::stride], 5)
        if len(ids) >= min_beams:
            order = np.argsort(med)
            rank = np.full(int(r.max()) - int(r.min()) + 1, -1)
            rank[ids[order] - r.min()] = np.arange(len(ids))
            step = _azimuth_step(az, rank[r - r.min()], len(ids))
            if not np.isfinite(step):
                raise ScanError(f"cannot measure the LiDAR's azimuth step from {len(xyz)} points")
            return ScanResolution(med[order], local_spacing(med[order]), step, len(ids), "ring")
    centres, vertical = _histogram_spacing(el[::stride], rho[::stride])
    span = float(el.max() - el.min())
    beams = int(round(span / float(np.mean(vertical)))) + 1 if len(vertical) else 0
    if len(vertical) == 0 or beams < min_beams:
        raise ScanError(f"cannot measure the LiDAR's beam spacing from {len(xyz)} points: no beam structure "
                        f"in the elevation histogram (need {min_beams} beams)")
    step = _azimuth_step(az, _strongest_beams(el, rho, centres, vertical), 4)
    if not np.isfinite(step):
        raise ScanError(f"cannot measure the LiDAR's azimuth step from {len(xyz)} points")
    return ScanResolution(centres, vertical, step, beams, "histogram")


def fixed_resolution(spacing_deg: float) -> ScanResolution:
    """A resolution of ``spacing_deg`` everywhere (vertical and horizontal): the stages'
    ``beam_spacing_deg`` override, for point sets without a LiDAR's beam structure."""
    s = math.radians(float(spacing_deg))
    return ScanResolution(np.zeros(1), np.full(1, s), s, 0, "given")


def resolve_resolution(xyz: np.ndarray, ring: np.ndarray | None = None,
                       spacing_deg: float | None = None) -> ScanResolution:
    """:func:`fixed_resolution` of ``spacing_deg`` when it is set, else :func:`measure_scan` of the sweep."""
    return fixed_resolution(spacing_deg) if spacing_deg is not None else measure_scan(xyz, ring)


def read_sweep(path, fmt: str, sample: str, spacing_deg: float | None = None,
               measure: bool = True) -> tuple[np.ndarray, ScanResolution | None]:
    """Read one sweep (:func:`lidarlift.datasets.readers.read_lidar_with_ring`) and its resolution
    (:func:`resolve_resolution`; None when not ``measure``): ((N, 4) float32 x, y, z, intensity,
    ScanResolution). A sweep whose resolution cannot be measured raises DatasetError naming the sample
    and the file."""
    from lidarlift.datasets.readers import DatasetError, read_lidar_with_ring

    pts, ring = read_lidar_with_ring(path, fmt, sample)
    if not measure:
        return pts, None
    try:
        return pts, resolve_resolution(pts[:, :3], ring, spacing_deg)
    except ScanError as e:
        raise DatasetError(f"sample {sample}: lidar file {path}: {e}; a point set without a LiDAR's beam structure "
                           f"needs the stage's beam_spacing_deg") from e
