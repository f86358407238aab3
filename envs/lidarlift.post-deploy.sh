#!/usr/bin/env bash
# Runs inside the new conda environment after Snakemake created it (--sdm conda):
# install lidarlift itself from this checkout (dependencies are pinned in the env file), then
# opencv-contrib again, last: it and opencv-python-headless (pulled by nuscenes-devkit) both write cv2/,
# and only contrib has cv2.ximgproc (SEEDS superpixels).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python -m pip install --no-deps -e "$repo"
python -m pip install --no-deps --force-reinstall opencv-contrib-python-headless==4.11.0.86
python -c "import cv2; cv2.ximgproc.createSuperpixelSEEDS(64, 64, 3, 16, 2); import lidarlift"
