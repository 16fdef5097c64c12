"""A reproducible 720p test video for the video demo benchmark: scikit-image photos panned at 1280x720 with
textured shapes moving over them, encoded as H.264 (yuv420p) by PyAV.

There is no real 720p video offline, so this stands in for one: camera motion over natural photos and
independently moving objects, so the decoder sees real inter-frame work (not a static or blank stream).
The same arguments give the same pixels (seeded); the file's SHA-256 is printed so runs can be compared.

    python -m benchmarks.video_source /tmp/pan_720p.mp4 --seconds 10
"""

from __future__ import annotations

import argparse
import hashlib

import cv2
import numpy as np

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def panorama(height: int) -> np.ndarray:
    """The photos side by side, each scaled to ``height`` rows: an RGB strip a few frame-widths wide."""
    import skimage.data

    tiles = []
    for name in PHOTOS:
        photo = getattr(skimage.data, name)()[..., :3]
        width = int(round(photo.shape[1] * height / photo.shape[0]))
        tiles.append(cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA))
    return np.ascontiguousarray(np.concatenate(tiles, axis=1))


def write_test_video(path: str, seconds: float = 10.0, width: int = 1280, height: int = 720, fps: int = 30,
                     seed: int = 0) -> str:  # fmt: skip
    """Writes the video and returns its SHA-256."""
    import av

    rng = np.random.default_rng(seed)
    strip = panorama(height)
    travel = strip.shape[1] - width
    num_frames = int(round(seconds * fps))
    shapes = []
    for k in range(6):  # a noise-textured disc or box each, bouncing at its own speed
        size = int(rng.integers(height // 10, height // 4))
        texture = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        texture = cv2.GaussianBlur(texture, (0, 0), 2.0)
        mask = np.zeros((size, size), np.uint8)
        if k % 2:
            cv2.circle(mask, (size // 2, size // 2), size // 2 - 1, 1, -1)
        else:
            mask[:] = 1
        position = rng.uniform([0, 0], [width - size, height - size])
        velocity = rng.uniform(-12, 12, 2)
        shapes.append([texture, mask.astype(bool), position, velocity])
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(num_frames):
            phase = (i / max(num_frames - 1, 1)) * 2  # across the strip and back
            x = int(round(travel * (phase if phase <= 1 else 2 - phase)))
            frame = strip[:, x : x + width].copy()
            for shape in shapes:
                texture, mask, position, velocity = shape
                size = texture.shape[0]
                for axis, limit in ((0, width - size), (1, height - size)):
                    position[axis] += velocity[axis]
                    if not 0 <= position[axis] <= limit:
                        velocity[axis] = -velocity[axis]
                        position[axis] = min(max(position[axis], 0), limit)
                px, py = int(position[0]), int(position[1])
                region = frame[py : py + size, px : px + size]
                region[mask] = texture[mask]
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args(argv)
    digest = write_test_video(args.path, args.seconds, args.width, args.height, args.fps)
    print(f"{args.path}: {args.width}x{args.height}, {args.fps} fps, {args.seconds} s, sha256 {digest}")


if __name__ == "__main__":
    main()
