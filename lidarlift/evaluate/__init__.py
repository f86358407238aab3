"""Evaluation: every quality figure of the run, against ground truth, in one package.

Production stages never read ground truth; the rules here do. Modules: :mod:`.truth` (a keyframe's
truth, read once), one scorer per stage (:mod:`.association`, :mod:`.presegment`, :mod:`.superpixels`,
:mod:`.masks`, :mod:`.pseudolabels`; networks through :mod:`.metrics`), :mod:`.shard` (rule
``evaluate_shard``: counts per shard), :mod:`.merge` (rule ``evaluate``: the figures of the run and the
devkit cross-check), :mod:`.metrics` (confusion matrix, IoU / mIoU, panoptic PQ / SQ / RQ in the
official conventions), :mod:`.devkit` (submission layouts and the devkit's evaluators), :mod:`.export`
(nuScenes, SemanticKITTI and PointSAM / MixSup label files), :mod:`.instances` (panoptic instances
from semantic predictions), :mod:`.run` (splits, devkit cross-check, exports), :mod:`.figures` and
:mod:`.report` (the report's figures and tables).
"""
