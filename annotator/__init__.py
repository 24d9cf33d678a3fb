"""Keypoint-transfer annotator: label one image, transfer keypoints to the rest."""

__version__ = "0.1.0"
