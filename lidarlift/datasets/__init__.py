"""Dataset adapters: each turns a dataset on disk into a :class:`lidarlift.manifest.Manifest`.

Adapters are chosen by ``dataset.kind`` in config through :data:`ADAPTERS`.
"""
from __future__ import annotations

from typing import Any, Callable

from lidarlift.manifest import Manifest

from .readers import DatasetError, read_lidar, read_image  # noqa: F401


def _nuscenes(cfg: dict[str, Any]) -> Manifest:
    from .nuscenes import build_manifest

    return build_manifest(cfg)


def _semantickitti(cfg: dict[str, Any]) -> Manifest:
    from .semantickitti import build_manifest

    return build_manifest(cfg)


ADAPTERS: dict[str, Callable[[dict[str, Any]], Manifest]] = {
    "nuscenes": _nuscenes,
    "semantickitti": _semantickitti,
}


def build_manifest(dataset_cfg: dict[str, Any]) -> Manifest:
    """Manifest for the ``dataset`` config section (``format`` picks the adapter)."""
    fmt = dataset_cfg.get("format", "nuscenes")
    if fmt not in ADAPTERS:
        raise ValueError(f"config key dataset.format: unknown dataset format {fmt!r}; choose one of {sorted(ADAPTERS)}")
    return ADAPTERS[fmt](dataset_cfg)
