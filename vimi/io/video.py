"""Video bytes in and out: raw frames, containers through PyAV (torchvision 0.29 has no video I/O)."""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

RAW_FORMAT = "raw_rgb24"  # frames as uint8 bytes, C-order num_frames × height × width × 3


class VideoDecodeError(Exception):
    """The bytes are not a decodable video."""


@dataclass
class VideoProbe:
    num_frames: int
    fps: float
    height: int
    width: int


def encode_raw(frames: np.ndarray) -> bytes:
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be T×H×W×3 uint8, got shape {frames.shape}")
    return frames.tobytes()


_DECODE_ERRORS = (av.error.FFmpegError, ValueError, OSError, IndexError)


@contextmanager
def _video_stream(data: bytes | str | Path):
    """(container, first video stream) of encoded bytes or a file; any decoding failure inside the
    block comes out as VideoDecodeError."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else str(data)
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            yield container, stream
    except _DECODE_ERRORS as exc:
        raise VideoDecodeError(f"{type(exc).__name__}: {exc}") from None


def _rate(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or Fraction(0))


def decode_container(
    data: bytes | str | Path,
    max_frames: int | None = None,
    keep: Sequence[int] | None = None,
    max_side: int | None = None,
) -> tuple[np.ndarray, float]:
    """Frames (T×H×W×3 uint8 RGB) and frame rate of an encoded video: the first `max_frames`, or only
    the frames whose indices are in `keep` (decoding stops after the last one), each scaled down while
    streaming so its shorter side is at most `max_side`. Only what is kept is ever held: a long 1080p
    clip costs the frames asked for, not all of its frames."""
    wanted = None if keep is None else set(int(i) for i in keep)
    last = None if wanted is None else max(wanted, default=-1)
    frames = []
    with _video_stream(data) as (container, stream):
        rate = _rate(stream)
        for index, frame in enumerate(container.decode(stream)):
            if last is not None and index > last:
                break
            if wanted is not None and index not in wanted:
                continue
            short = min(frame.width, frame.height)
            if max_side is not None and short > max_side:
                scale = max_side / short
                frame = frame.reformat(
                    width=max(1, round(frame.width * scale)), height=max(1, round(frame.height * scale))
                )
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise VideoDecodeError("no decodable frame")
    return np.stack(frames), rate


def probe(data: bytes | str | Path) -> VideoProbe:
    """Decode every frame (so a corrupt tail is caught, without holding the frames) and report
    frame count, rate and size."""
    count, height, width = 0, 0, 0
    with _video_stream(data) as (container, stream):
        rate = _rate(stream)
        for frame in container.decode(stream):
            count += 1
            height, width = frame.height, frame.width
    if not count:
        raise VideoDecodeError("no decodable frame")
    return VideoProbe(num_frames=count, fps=rate, height=height, width=width)


def decode_video(
    data: bytes,
    video_format: str,
    num_frames: int,
    height: int,
    width: int,
    keep: Sequence[int] | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """Frames of a row of the video corpus as T×H×W×3 uint8: all of them, or those in `keep`
    (`decode_container`; a raw row is sliced, never scaled)."""
    if video_format == RAW_FORMAT:
        expected = num_frames * height * width * 3
        if len(data) != expected:
            raise VideoDecodeError(f"raw video holds {len(data)} bytes, expected {expected}")
        frames = np.frombuffer(data, dtype=np.uint8).reshape(num_frames, height, width, 3)
        return frames if keep is None else frames[[i for i in keep if 0 <= i < num_frames]]
    frames, _ = decode_container(data, keep=keep, max_side=max_side)
    return frames


def even_frames(available: int, num_frames: int) -> list[int]:
    """`num_frames` frame indices spread evenly over a clip of `available` frames (all of a shorter one)."""
    if available <= num_frames:
        return list(range(max(available, 0)))
    return np.linspace(0, available - 1, num_frames).round().astype(int).tolist()


def write_video(frames: np.ndarray, path: str | Path, fps: float = 8.0) -> Path:
    """Write T×H×W×3 uint8 frames as MP4 (H.264) or GIF, chosen by the suffix; atomic."""
    path = Path(path)
    suffix = path.suffix.lower()
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if suffix == ".gif":
            from PIL import Image

            images = [Image.fromarray(f) for f in frames]
            images[0].save(
                tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0
            )
        elif suffix in (".mp4", ".avi", ".mkv", ".webm"):
            codec = {".webm": "libvpx-vp9"}.get(suffix, "libx264")
            # H.264 with yuv420p needs even sides: pad by repeating the last row/column.
            h, w = frames.shape[1:3]
            padded = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            with av.open(str(tmp), mode="w", format=suffix[1:] if suffix != ".mkv" else "matroska") as out:
                stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height = padded.shape[2], padded.shape[1]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": "18"}
                for frame in padded:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
        else:
            raise ValueError(f"unsupported video suffix {suffix!r}; use .mp4, .gif, .avi, .mkv or .webm")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
