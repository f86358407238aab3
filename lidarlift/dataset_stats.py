"""Size figures of a dataset (summary key ``dataset``)."""
from __future__ import annotations

from typing import Any

from lidarlift.manifest import Manifest


def manifest_stats(manifest: Manifest) -> dict[str, Any]:
    """Scenes, keyframes, keyframe points (from file sizes), images and skipped samples of a manifest."""
    cols = 5 if manifest.kind == "nuscenes" else 4
    points = sum(manifest.resolve(s.lidar.path).stat().st_size // (4 * cols) for s in manifest.samples)
    return {
        "kind": manifest.kind,
        "version": manifest.version,
        "scenes": len(manifest.shards),
        "samples": len(manifest.samples),
        "points": int(points),
        "images": sum(len(s.cameras) for s in manifest.samples),
        "splits": {sp: sum(1 for s in manifest.samples if s.split == sp) for sp in sorted({s.split for s in manifest.samples})},
        "skipped": manifest.skipped,
    }
