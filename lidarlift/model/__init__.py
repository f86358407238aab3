"""The M-step: a sparse-conv segmentation network trained on pseudo-labels (or ground truth) and its
predictions for the next E-step.

Modules (imported on demand, so ``import lidarlift.model`` stays light):
- ``spconv_compat`` CPU workarounds for the spconv 2.3.8 wheel (installed by ``unet`` on import);
- ``unet`` the network (:class:`~lidarlift.model.unet.SparseUNet`), voxelize / devoxelize;
- ``losses`` CE + Lovász-softmax + the negative-label loss on candidate sets;
- ``data`` sweeps with pseudo-label or ground-truth labels, augmentation, shard splits;
- ``train`` config-driven training (checkpoints, resume, TensorBoard, AMP, DDP) and ``summarize``;
- ``predict`` per-shard logits, features and argmax into the ``predict`` store;
- ``scores`` confusion counts and mIoU; ``toyscene`` ray-cast test sweeps (tests, benchmarks).
"""
