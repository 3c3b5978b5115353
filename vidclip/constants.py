"""Constants shared across vidclip, and the documented tensor layouts.

Layouts: a decoded clip is uint8 ``(T, H, W, 3)``; a preprocessed clip is float ``(T, 3, S, S)``; a batch is
``(B, T, 3, S, S)`` with a ``(B, T)`` bool mask (True = real frame). Text is ``(B, L)`` token ids (0 = padding).
"""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_IMAGE_SIZE = 224
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".ogv", ".m4v", ".mpg", ".mpeg", ".flv", ".3gp")

# The CLIP towers inside a VideoTextModel by name (``train.freeze_towers``): the prefix of their parameter names.
# Prompt-cube parameters that live inside the visual tower are new modules, not part of the tower.
CLIP_TOWERS = {"visual": "frame_encoder.visual.", "text": "text_encoder."}
