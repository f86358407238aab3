"""lidarlift: LiDAR segmentation labels from cheap signals, lifted through point-pixel association."""

__version__ = "0.1.0"
