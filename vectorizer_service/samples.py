"""The sample media of the demos: the fixture pictures with captions, and two frame-list videos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MEDIA_DIR = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "media"
CAPTIONS = {
    "rings_256x256.png": "concentric coloured rings",
    "stripes_320x240.png": "horizontal stripes",
    "grid_200x400.png": "a grid of squares",
    "tall_96x480.png": "a tall narrow strip",
    "wide_640x160.jpg": "a wide panorama",
    "small_48x40.png": "a tiny thumbnail",
}
VIDEOS = {"clipA": "a short animated clip", "clipB": "a longer animated clip"}


def sample_media(media_dir: Path = MEDIA_DIR, *, videos: bool = True) -> list[dict[str, Any]]:
    """``[{"name", "caption", "image": bytes | None, "frames": [bytes] | None}]``: pictures, then videos."""
    rows: list[dict[str, Any]] = [
        {"name": name, "caption": caption, "image": (media_dir / name).read_bytes(), "frames": None}
        for name, caption in CAPTIONS.items() if (media_dir / name).is_file()]
    for clip, caption in VIDEOS.items() if videos else ():
        frames = sorted((media_dir / clip).glob("frame_*.png"))
        if frames:
            rows.append({"name": f"{clip} (video)", "caption": caption, "image": None,
                         "frames": [f.read_bytes() for f in frames]})
    if not rows:
        raise FileNotFoundError(f"no sample media in {media_dir} (expected {', '.join(CAPTIONS)})")
    return rows
