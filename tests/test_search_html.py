"""The HTML results page embeds real thumbnails decoded from the videos (checked by decoding the images back)."""
import base64
import io
import re
from types import SimpleNamespace

import numpy as np
from PIL import Image

from vidclip.engine.search_html import thumbnail_strip, write_results_page


def _hit(rank, video_id, path):
    return SimpleNamespace(rank=rank, score=0.5 / rank, coarse_score=0.4 / rank, video_id=video_id, path=str(path))


def test_thumbnails_are_frames_of_the_video(tmp_path):
    from conftest import write_video

    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], dtype=np.uint8)
    frames = np.repeat(colours, 2, axis=0)[:, None, None, :] * np.ones((1, 48, 64, 1), dtype=np.uint8)  # (10, H, W, 3)
    path = write_video(tmp_path / "colours.mp4", frames)
    strip = thumbnail_strip(path, count=5)
    assert len(strip) == 5
    means = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"), dtype=np.float32).mean((0, 1))
             for b in strip]
    for k, mean in enumerate(means):  # uniformly spaced frames 0, 2, 4, 7, 9 -> colours 0, 1, 2, 3, 4
        assert np.abs(mean - colours[k]).max() < 20, (k, mean)


def test_page_is_self_contained_and_reports_broken_videos(make_video, tmp_path):
    good, _ = make_video(num_frames=6, name="good.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    results = {"a red <circle>": [_hit(1, "good", good), _hit(2, "broken", broken)]}
    page = write_results_page(tmp_path / "page.html", results, lambda h: h.path, thumbnails=3)
    text = page.read_text()
    images = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 3
    for b64 in images:
        Image.open(io.BytesIO(base64.b64decode(b64))).verify()
    assert "a red &lt;circle&gt;" in text  # the query is escaped
    assert "no thumbnails" in text and "broken.mp4" in text
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from elsewhere
