"""Video data I/O: readers, frame samplers, transforms, data lists and datasets."""
from .readers import VideoReader, open_video
from .samplers import FrameIndices, create_sampler
from .transforms import create_video_transform

__all__ = ["VideoReader", "open_video", "FrameIndices", "create_sampler", "create_video_transform"]
