import av
import numpy as np


def test_lossless_writer_roundtrip(make_video):
    path, frames = make_video(num_frames=5)
    with av.open(str(path)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert decoded.shape == frames.shape
    assert np.array_equal(decoded, frames)
