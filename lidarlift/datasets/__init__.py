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


def dataset_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``dataset`` config section with the schema's defaults filled in and validated (errors name the
    key); ``label_space`` (``labels.space``, not a dataset key) may ride along and is kept."""
    from lidarlift.config import section

    extra = {k: cfg[k] for k in ("label_space",) if k in cfg}
    return {**section("dataset", {k: v for k, v in cfg.items() if k not in extra}), **extra}


def build_manifest(dataset_cfg: dict[str, Any]) -> Manifest:
    """Manifest for the ``dataset`` config section (``format`` picks the adapter; :func:`dataset_section`);
    without ``label_space`` each adapter takes its format's label space."""
    dataset_cfg = dataset_section(dataset_cfg)
    fmt = dataset_cfg["format"]
    if fmt not in ADAPTERS:
        raise ValueError(f"config key dataset.format: unknown dataset format {fmt!r}; choose one of {sorted(ADAPTERS)}")
    return ADAPTERS[fmt](dataset_cfg)
