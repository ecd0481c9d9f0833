"""The dataset layer shared by every neural renderer (``docs/training.md``).

* :class:`TrackedVideo` - a video and its ``facerender track`` folder, checked to belong together;
* :func:`stable_crop_boxes` - face crops that are stable over time (from the smoothed track);
* :func:`build_cache` / :class:`ConditioningCache` - conditioning maps and real crops rendered once per
  (track, settings), cached on disk in chunks;
* :class:`WindowDataset` / :func:`multi_video_dataset` - space-time windows of conditioning + the real frame, split
  by time (the last 15 % is validation).
"""
from .cache import CACHE_VERSION, FLOAT16_MAPS, MAP_CHANNELS, ConditioningCache, ConditioningRenderer, \
    ConditioningSettings, build_cache, dequantize, quantize, render_conditioning
from .crops import CropBoxes, CropReference, crop_boxes_from_pose, crop_camera, crop_reference, stable_crop_boxes
from .dataset import WindowDataset, multi_video_dataset, split_frames, window_indices
from .source import TrackedVideo, open_trained_target, video_fingerprint

__all__ = [
    "TrackedVideo", "open_trained_target", "video_fingerprint", "CropBoxes", "CropReference", "crop_reference", "crop_boxes_from_pose",
    "stable_crop_boxes", "crop_camera", "ConditioningSettings", "ConditioningCache", "ConditioningRenderer",
    "build_cache", "render_conditioning", "quantize", "dequantize", "MAP_CHANNELS", "FLOAT16_MAPS", "CACHE_VERSION",
    "WindowDataset",
    "multi_video_dataset", "split_frames", "window_indices",
]
