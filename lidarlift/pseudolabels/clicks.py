"""Sparse clicks: a simulated annotator (IUPC's protocol and a point-budget protocol) and the clicks file.

A click is one keyframe point with one class ``1..K`` of the label space. Clicks are written once per
shard to a tab-separated file that every EM round and the trainer read, so all rounds agree; the same
format is how a user supplies real clicks::

    # lidarlift clicks v1
    sample_token	point_index	class
    ca9a282c9e77460f8360f564131a8af5	1234	car
    ca9a282c9e77460f8360f564131a8af5	877	11

``sample_token`` is the nuScenes sample token (the manifest's ``SampleRecord.token``), ``point_index``
the 0-based row of the point in the keyframe's LiDAR file, ``class`` a class name of the label space
(``lidarlift.classes``) or its 1-based index, or ``ignore`` for a point of no class (noise): it was
asked, so it is not asked again, and it labels nothing. Lines starting with ``#`` and blank lines are
skipped. A header line names the columns; other columns are allowed and skipped, so the next-clicks
file the active protocol writes (:func:`write_next_clicks`: sample_token, point_index, x, y, z, reason,
class) is itself a clicks file once its class column is filled (rows left empty are not answered yet).

Simulated protocols (seeded per sample token, so every run and round gets the same clicks):

- ``iupc``: IUPC's annotator (its ``prepare_sparse_label_mask``): inside the cameras' field of view,
  every ground cell and every non-ground pre-segment gets one click per class it contains, after IUPC's
  filters (clusters under 5 / 10 / 20 points skipped, minority classes under 0.1 % / 1 % / 10 % of a
  cluster dropped, depending on thing content). About 0.8 % of points on nuScenes.
- ``active``: :mod:`.active` chooses the points from the evidence in rounds; the annotator answers
  each round's next-clicks file (:mod:`.annotator`).
- ``budget``: a given share of the keyframe's points (stochastic rounding, so the expected share is
  exact), spread as an annotator would: regions are the ground-truth objects and the connected stuff
  regions of each class; every region of at least ``min_region_points`` points gets one click, largest
  first, while the budget lasts; the rest of the budget goes to large regions in proportion to their
  size (D'Hondt), placed by farthest-point sampling so a long road gets clicks along its length. The
  first click of a region lands near its centre.
"""
from __future__ import annotations

import heapq
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from lidarlift.classes import LabelSpace

CLICKS_HEADER = ("sample_token", "point_index", "class")
NEXT_HEADER = ("sample_token", "point_index", "x", "y", "z", "reason", "class")
IGNORE = "ignore"  # the answer for a point of no class of the label space
PROTOCOLS = ("budget", "iupc", "active", "file")


class ClickError(ValueError):
    """A clicks file or click parameter is wrong; the message names the file, line, sample or key."""


@dataclass
class SampleClicks:
    """Clicks of one keyframe: ``point_index`` (n,) int64 rows of the keyframe, ``label`` (n,) uint8 1..K;
    ``ignored`` (m,) int64 rows asked and answered ``ignore`` (no class; they label nothing)."""

    point_index: np.ndarray
    label: np.ndarray
    ignored: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @staticmethod
    def empty() -> "SampleClicks":
        return SampleClicks(np.zeros(0, np.int64), np.zeros(0, np.uint8))

    def __len__(self) -> int:
        return len(self.point_index)

    @property
    def asked(self) -> np.ndarray:
        """(n + m,) int64 every row asked: clicked or answered ``ignore``."""
        return np.union1d(self.point_index, self.ignored)

    def merged(self, other: "SampleClicks") -> "SampleClicks":
        """These clicks and ``other``'s (sorted by row); a row clicked in both keeps ``other``'s class."""
        idx = np.concatenate([self.point_index, other.point_index])
        lab = np.concatenate([self.label, other.label])
        last = len(idx) - 1 - np.unique(idx[::-1], return_index=True)[1]  # the later answer wins
        ignored = np.setdiff1d(np.union1d(self.ignored, other.ignored), idx)
        return SampleClicks(idx[last].astype(np.int64), lab[last].astype(np.uint8), ignored.astype(np.int64))


def click_count(share: float, n_points: int, rng: np.random.Generator) -> int:
    """Clicks on ``share`` of ``n_points`` by stochastic rounding (one draw of ``rng``), so the expected
    share is exact; the budget and the active protocol draw it the same way, so one seed and share give
    both the same number of clicks per keyframe."""
    if not 0 <= share <= 1:
        raise ClickError(f"config key pseudolabels.clicks.share: {share} is not a share in 0..1")
    want = share * n_points
    return int(np.floor(want)) + int(rng.random() < want - np.floor(want))


def click_rng(seed: int, sample_token: str) -> np.random.Generator:
    """The annotator's random stream for one keyframe: same seed and token, same clicks."""
    return np.random.default_rng([int(seed), zlib.crc32(sample_token.encode())])


# ----------------------------------------------------------------------------------------------
# budget protocol


def stuff_regions(xyz: np.ndarray, label: np.ndarray, classes: Iterable[int], link_m: float = 1.0) -> np.ndarray:
    """Connected regions of each class: (N,) int64 region id (-1 for points of other classes).

    ``xyz`` (N, 3) float32; points of one class closer than about ``link_m`` (through a voxel grid of
    that size, 26-connected) share a region.
    """
    region = np.full(len(label), -1, np.int64)
    next_id = 0
    for c in classes:
        idx = np.flatnonzero(label == c)
        if len(idx) == 0:
            continue
        vox = np.floor(xyz[idx] / link_m).astype(np.int64)
        keys, inv = np.unique(vox, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        if len(keys) == 1:
            region[idx] = next_id
            next_id += 1
            continue
        pairs = cKDTree(keys.astype(np.float64)).query_pairs(r=1.75, output_type="ndarray")  # 26-neighbourhood
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(keys), len(keys)))
        n, comp = connected_components(graph, directed=False)
        region[idx] = next_id + comp[inv]
        next_id += n
    return region


def _farthest_points(xyz: np.ndarray, k: int, first: int) -> np.ndarray:
    """Indices of ``k`` farthest-point samples of (n, 3) ``xyz`` starting at row ``first``."""
    chosen = [first]
    d = np.linalg.norm(xyz - xyz[first], axis=1)
    for _ in range(1, min(k, len(xyz))):
        nxt = int(np.argmax(d))
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(xyz - xyz[nxt], axis=1))
    return np.asarray(chosen, np.int64)


def budget_clicks(xyz: np.ndarray, label: np.ndarray, instance: np.ndarray, space: LabelSpace, share: float,
                  rng: np.random.Generator, *, min_region_points: int = 5, stuff_link_m: float = 1.0) -> SampleClicks:
    """Clicks on ``share`` of the keyframe's points, spread over objects and stuff regions.

    Args:
        xyz: (N, 3) float32 points (any metric frame).
        label: (N,) uint8 true class 1..K (0 = ignore; never clicked).
        instance: (N,) int64 true instance key (0 = none); thing points with a key form one region each.
        space: the label space (which classes are things).
        share: clicks / points, e.g. 0.001 for 0.1 %.
        rng: the annotator's random stream (:func:`click_rng`).
    """
    n_points = len(label)
    n_clicks = click_count(share, n_points, rng)
    if n_clicks == 0:
        return SampleClicks.empty()
    thing = space.thing_mask[label] & (instance > 0)
    region = np.full(n_points, -1, np.int64)
    inst_keys, inst_inv = np.unique(instance[thing], return_inverse=True)
    region[thing] = inst_inv.reshape(-1)
    rest = (label > 0) & ~thing
    stuff = stuff_regions(xyz[rest], label[rest], np.unique(label[rest]), stuff_link_m)
    region[np.flatnonzero(rest)] = np.where(stuff >= 0, stuff + len(inst_keys), -1)

    ids, sizes = np.unique(region[region >= 0], return_counts=True)
    keep = sizes >= min_region_points
    ids, sizes = ids[keep], sizes[keep]
    if len(ids) == 0:
        return SampleClicks.empty()
    order = np.lexsort((rng.random(len(ids)), -sizes))  # largest first, ties at random
    ids, sizes = ids[order], sizes[order]
    alloc = np.zeros(len(ids), np.int64)
    alloc[: min(n_clicks, len(ids))] = 1
    extra = n_clicks - int(alloc.sum())
    if extra > 0:  # D'Hondt: the next click goes to the region with the most points per click
        heap = [(-sizes[r] / 2.0, r) for r in range(len(ids))]
        heapq.heapify(heap)
        for _ in range(extra):
            _, r = heapq.heappop(heap)
            alloc[r] += 1
            heapq.heappush(heap, (-sizes[r] / (alloc[r] + 1.0), r))

    members = np.argsort(region, kind="stable")
    starts = np.searchsorted(region[members], ids)
    points, labels = [], []
    for r, k in zip(range(len(ids)), alloc):
        if k == 0:
            continue
        pts = members[starts[r]: starts[r] + sizes[r]]
        k = min(int(k), len(pts))
        local = xyz[pts].astype(np.float64)
        d = np.linalg.norm(local - local.mean(axis=0), axis=1)
        near = np.flatnonzero(d <= np.quantile(d, 0.25))  # an annotator clicks well inside the region
        first = int(rng.choice(near))
        chosen = pts[_farthest_points(local, k, first)]
        points.append(chosen)
        labels.append(label[chosen])
    idx = np.concatenate(points)
    lab = np.concatenate(labels).astype(np.uint8)
    order = np.argsort(idx)
    return SampleClicks(idx[order].astype(np.int64), lab[order])


# ----------------------------------------------------------------------------------------------
# IUPC protocol


def iupc_clicks(label: np.ndarray, ground: np.ndarray, segment_id: np.ndarray, ground_cell: np.ndarray,
                fov: np.ndarray, space: LabelSpace, rng: np.random.Generator) -> SampleClicks:
    """IUPC's simulated annotator: one click per class per ground cell and per pre-segment (in the FOV).

    Args:
        label: (N,) uint8 true class 1..K (0 = ignore).
        ground: (N,) bool ground points; ``ground_cell`` (N,) int32 their cell (-1 elsewhere).
        segment_id: (N,) int32 non-ground segment (-1 = noise, never clicked).
        fov: (N,) bool point projects into some camera (IUPC labels only these).
        space: label space; ``manmade`` (when present) gets IUPC's smaller minimum cluster size.
    """
    thing = space.thing_mask
    manmade = space.index("manmade") if "manmade" in space.classes else -1
    clicks: list[int] = []

    def click(members: np.ndarray, classes: Iterable[int]) -> None:
        for c in classes:
            if c == 0:
                continue
            clicks.append(int(rng.choice(members[label[members] == c])))

    g = np.flatnonzero(ground & fov & (ground_cell >= 0))
    order = np.argsort(ground_cell[g], kind="stable")
    g = g[order]
    for members in np.split(g, np.flatnonzero(np.diff(ground_cell[g])) + 1) if len(g) else []:
        present = np.unique(label[members])
        click(members, present)

    s = np.flatnonzero(~ground & fov & (segment_id >= 0))
    s = s[np.argsort(segment_id[s], kind="stable")]
    for members in np.split(s, np.flatnonzero(np.diff(segment_id[s])) + 1) if len(s) else []:
        present, counts = np.unique(label[members], return_counts=True)
        if len(present) == 1 and present[0] == 0:
            continue
        n_things = int(thing[present].sum())
        if n_things == 0:
            if len(members) < (10 if manmade in present else 20):
                continue
            minor = counts / counts.sum() <= 0.01
        else:
            if len(members) < 5:
                continue
            if n_things == 1 and thing[present[np.argmax(counts)]]:
                minor = counts / counts.sum() <= 0.1
            else:
                minor = counts / counts.sum() <= 0.001
        click(members, present[~minor])

    idx = np.sort(np.asarray(clicks, np.int64))
    return SampleClicks(idx, label[idx].astype(np.uint8))


# ----------------------------------------------------------------------------------------------
# the clicks file


def _class_name(space: LabelSpace, c: int) -> str:
    return space.classes[int(c) - 1] if int(c) > 0 else IGNORE


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def write_clicks(path: str | Path, clicks: dict[str, SampleClicks], space: LabelSpace) -> None:
    """Write clicks (sample token -> :class:`SampleClicks`, in the given order) as a clicks file; rows
    answered ``ignore`` follow each sample's clicks."""
    lines = [f"# lidarlift clicks v1, label space {space.name}", "\t".join(CLICKS_HEADER)]
    for token, c in clicks.items():
        lines += [f"{token}\t{int(i)}\t{_class_name(space, l)}" for i, l in zip(c.point_index, c.label)]
        lines += [f"{token}\t{int(i)}\t{IGNORE}" for i in c.ignored]
    _write_lines(Path(path), lines)


def write_next_clicks(path: str | Path, proposals: dict[str, tuple[np.ndarray, np.ndarray, list[str]]],
                      space: LabelSpace) -> None:
    """Write the next-clicks file: one row per proposed point with an empty class column to fill.

    ``proposals``: sample token -> (point_index (n,) int64, xyz (n, 3) float lidar frame of the
    keyframe's file, reason (n,) str). Once answered it is a clicks file (:func:`read_clicks`).
    """
    lines = [f"# lidarlift next clicks v1, label space {space.name}: fill the class column with a class name "
             f"({', '.join(space.classes)}), its index 1..{space.num_classes}, or {IGNORE} for a point of no class",
             "\t".join(NEXT_HEADER)]
    for token, (index, xyz, reason) in proposals.items():
        for i, p, r in zip(index, xyz, reason):
            lines.append(f"{token}\t{int(i)}\t{p[0]:.3f}\t{p[1]:.3f}\t{p[2]:.3f}\t{r}\t")
    _write_lines(Path(path), lines)


def fill_next_clicks(path: str | Path, answer: Callable[[str, np.ndarray], np.ndarray], space: LabelSpace) -> int:
    """Fill the empty class cells of a next-clicks file in place: ``answer(sample_token, point_index (n,)
    int64) -> (n,) class 1..K, or 0 for ignore``. Returns the number of cells filled."""
    path = Path(path)
    lines = path.read_text().splitlines()
    header, rows = None, []
    for k, raw in enumerate(lines):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = raw.split("\t")
        if header is None:
            header = [f.strip().lower() for f in fields]
            if tuple(header) != NEXT_HEADER:
                raise ClickError(f"next-clicks file {path}, line {k + 1}: expected the header {NEXT_HEADER}")
            continue
        fields += [""] * (len(NEXT_HEADER) - len(fields))
        if not fields[-1].strip():
            rows.append((k, fields))
    by_token: dict[str, list[tuple[int, list[str]]]] = {}
    for k, fields in rows:
        by_token.setdefault(fields[0].strip(), []).append((k, fields))
    for token, items in by_token.items():
        classes = answer(token, np.asarray([int(f[1]) for _, f in items], np.int64))
        for (k, fields), c in zip(items, classes):
            lines[k] = "\t".join(fields[:-1] + [_class_name(space, int(c))])
    _write_lines(path, lines)
    return len(rows)


def _parse_class(value: str, space: LabelSpace, where: str) -> int:
    """1..K, or 0 for ``ignore``."""
    value = value.strip()
    if value.lower() == IGNORE:
        return 0
    if value.isdigit():
        c = int(value)
        if not 1 <= c <= space.num_classes:
            raise ClickError(f"{where}: class index {c} is outside 1..{space.num_classes} of label space {space.name!r}")
        return c
    if value not in space.classes:
        raise ClickError(f"{where}: unknown class {value!r} in label space {space.name!r}; known: "
                         f"{', '.join(space.classes)} (or {IGNORE})")
    return space.classes.index(value) + 1


def read_clicks(path: str | Path, space: LabelSpace, points_per_sample: dict[str, int],
                known_tokens: Iterable[str] | None = None) -> dict[str, SampleClicks]:
    """Read and check a clicks file; returns the clicks of the samples in ``points_per_sample``.

    Args:
        path: the clicks file (three columns, or any columns named by a header line that holds
            sample_token, point_index and class, as the next-clicks file does; rows with an empty class
            are not answered yet and are skipped).
        space: label space the class names refer to.
        points_per_sample: sample token -> number of keyframe points, for the samples wanted (a shard);
            every wanted sample is in the result (with no clicks if the file has none for it).
        known_tokens: every sample token of the dataset (the manifest); a row naming any other token is
            an error. Rows of known samples outside ``points_per_sample`` (other shards) are skipped.

    Raises:
        ClickError naming the file and line for a missing file, a bad header, an unknown class, a sample
        not in the dataset, a point index out of range, or a point clicked twice with two classes.
    """
    path = Path(path)
    if not path.exists():
        raise ClickError(f"clicks file {path} does not exist")
    known = set(known_tokens) if known_tokens is not None else set(points_per_sample)
    rows: dict[str, dict[int, int]] = {t: {} for t in points_per_sample}
    columns: list[str] | None = None
    for lineno, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in raw.split("\t")] if "\t" in raw else line.split()
        where = f"clicks file {path}, line {lineno}"
        if columns is None:
            names = [f.lower() for f in fields]
            if set(CLICKS_HEADER) <= set(names):
                columns = names
                continue
            columns = list(CLICKS_HEADER)
        if len(fields) == len(columns) - 1 and columns[-1] == "class":
            fields.append("")  # an editor dropped the trailing tab of an unanswered row
        if len(fields) != len(columns):
            raise ClickError(f"{where}: expected {len(columns)} fields ({', '.join(columns)}), got {len(fields)}: {raw!r}")
        row = dict(zip(columns, fields))
        token, index, cls = row["sample_token"], row["point_index"], row["class"]
        if token not in known:
            raise ClickError(f"{where}: sample {token!r} is not in the dataset (manifest)")
        try:
            i = int(index)
        except ValueError:
            raise ClickError(f"{where}: point index {index!r} is not an integer") from None
        if not cls:
            continue  # not answered yet
        c = _parse_class(cls, space, where)
        if token not in rows:
            continue
        n = points_per_sample[token]
        if not 0 <= i < n:
            raise ClickError(f"{where}: point index {i} is out of range for sample {token} ({n} points)")
        if rows[token].get(i, c) != c:
            raise ClickError(f"{where}: point {i} of sample {token} is clicked with two classes "
                             f"({_class_name(space, rows[token][i])} and {_class_name(space, c)})")
        rows[token][i] = c
    out = {}
    for token, d in rows.items():
        idx = np.asarray(sorted(i for i, c in d.items() if c > 0), np.int64)
        ignored = np.asarray(sorted(i for i, c in d.items() if c == 0), np.int64)
        out[token] = SampleClicks(idx, np.asarray([d[i] for i in idx], np.uint8), ignored)
    return out
