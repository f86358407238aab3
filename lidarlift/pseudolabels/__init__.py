"""Pseudo-labels (the E-step): clicks + propagation, or annotation-free 2D lifting, then network rounds.

Modules:
- :mod:`.clicks` simulated annotator (IUPC protocol, point budget) and the clicks file format;
- :mod:`.propagate` the IUPC rule set (baseline) and our evidence-graph propagation;
- :mod:`.simulate2d` simulated 2D predictions and the user 2D-map input;
- :mod:`.annotation_free` PointSAM-faithful lifting + SAR (baseline) and ours;
- :mod:`.estep` rounds >= 1 from network predictions (IUPC's rule and ours);
- :mod:`.annotator` the clicks: simulated annotator (reads ground truth) or a user's file;
- :mod:`.stage` the per-shard, per-round stage (I/O).

Quality (summary key ``pseudolabels``) is measured by :mod:`lidarlift.evaluate.pseudolabels`.
"""
from __future__ import annotations
