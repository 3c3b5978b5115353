"""Exceptions raised by vidclip. Every message names the file, key or value at fault and says what to do."""


class VidclipError(Exception):
    """Base class of every error vidclip raises on purpose."""


class ConfigError(VidclipError, ValueError):
    """A config key is unknown, has the wrong type, or the combination of values is impossible."""


class VideoDecodeError(VidclipError):
    """A video file is missing, empty, truncated, not a video, or yields no decodable frames."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataListError(VidclipError, ValueError):
    """A data list (JSONL) or an official annotation file is malformed or inconsistent."""


class CheckpointError(VidclipError):
    """A checkpoint or pretrained weight file is missing, unreadable or does not fit the model."""


class NonFiniteError(VidclipError, FloatingPointError):
    """A NaN or inf appeared in a loss, similarity or transport plan."""


class IntegrityError(VidclipError):
    """An artefact does not match what reads or resumes it (other settings, weights or inputs), or a file of it is
    truncated or corrupt. The message names the file, the differing key(s) and the way out."""
