"""Video → one image: IG-VLM's image grid ("An Image Grid Can Be Worth a Video"), torch-free.

M3 answers questions about a video the way the original release did, through IG-VLM: a few frames
of the clip are laid out as one grid image, and the image model answers about the grid at any
visual-token budget. This module reads the frames and builds the grid; everything after that is the
ordinary image path.

    grid = video_to_grid("clip.mp4")                    # 6 frames, 2 per row, 3 rows
    grid = video_to_grid("tvqa_clip.mp4", ts="12.5-30")  # frames of the seconds 12.5 to 30 only

Frame choice, as IG-VLM makes it (its frames come from moviepy 1.0):

- the clip has `total = int(duration · fps) + 1` frames, `duration` being the container's duration
  in seconds rounded to centiseconds (what moviepy read from FFmpeg); with a window `ts="start-end"`
  (seconds) it has `int(end · fps) - int(start · fps) + 1`, counted from frame `int(start · fps)`;
- with `interval = floor(total / num_frames)` the frames at 0, interval, 2·interval, … of the clip are
  taken until `num_frames` are there. Frame k is the k-th frame the decoder outputs (its position is
  read from its timestamp, relative to the first frame's, so a stream starting at a non-zero time
  counts from 0). A frame past the video's end (a window running past it, or moviepy's count
  being one more than the frames there are) is the video's last frame again, as moviepy gave it.

Grid layout (`frames_to_grid`): `round(√n)` frames per row; every frame is resized (bilinear) to the
smallest width and the smallest height among them; the last row is filled with white frames; rows
are stacked top to bottom, frames left to right in time order. Six frames of W×H make a 2W×3H grid.

Cost is bounded: only the frames needed are decoded (a seek to the keyframe at or before each one when
it lies far ahead), and `VideoLimits` caps the frames asked for, the pixels per frame, the video's
duration and the frames decoded in all; only video container formats are opened (`VIDEO_FORMATS`).
Errors are `VideoError` (a `ValueError`; limits raise its subclass `VideoLimitError`), each naming the
file and the value at fault.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_NUM_FRAMES = 6
"""IG-VLM's frame count (`frame_fixed_number`)."""

_SEEK_AHEAD_FRAMES = 100
"""Decode forward to a frame at most this far ahead; seek to one farther away (moviepy's rule too)."""
_INDEX_EPS = 1e-6
"""Float slack when a time in seconds becomes a frame index (3.0 must not become 2.999…)."""
_WHITE = (255, 255, 255)

VIDEO_FORMATS = "mov,matroska,avi,gif,mpegts,mpeg,flv,ogg,asf"
"""The FFmpeg demuxers a video may be read with (MP4/MOV, MKV/WebM, AVI, GIF, MPEG-TS/PS, FLV, Ogg, WMV).

Only these: FFmpeg's playlist and list demuxers (HLS, concat, ...) open the files or URLs named inside
the data, which would let an uploaded "video" make a server read its own disk."""

VideoSource = str | os.PathLike | BinaryIO
"""A path, or an open binary file (e.g. the bytes of an uploaded video in a `BytesIO`)."""


class VideoError(ValueError):
    """A video that cannot be turned into frames; the message names the file and the reason."""


class VideoLimitError(VideoError):
    """A video over one of the `VideoLimits` (a server answers it with 413, like an oversized image)."""


@dataclass(frozen=True)
class VideoLimits:
    """What one video may cost: each limit is checked before the work it bounds (the frames decoded, as they are)."""

    max_frames: int = 64
    """Most frames a grid may be built from (`num_frames`)."""
    max_frame_pixels: int = 4096 * 4096
    """Largest width × height of a frame, checked from the stream header before decoding (and by the decoder on
    every frame: a stream that switches to larger frames fails to decode)."""
    max_duration_s: float = 3 * 3600.0
    """Longest video, in seconds."""
    max_decoded_frames: int = 20_000
    """Most frames decoded for one video (a stream without keyframes to seek to decodes from its start)."""


DEFAULT_LIMITS = VideoLimits()


@dataclass(frozen=True)
class ClipFrames:
    """Which frames of a video make the grid: stream indices `first + k · interval`, k < count."""

    first: int
    interval: int
    count: int

    @property
    def indices(self) -> list[int]:
        return [self.first + k * self.interval for k in range(self.count)]


def frame_index(seconds: float, fps: float) -> int:
    """The index of the frame shown at `seconds` in a stream of `fps` frames per second."""
    return math.floor(seconds * fps + _INDEX_EPS)


def parse_ts(ts: str) -> tuple[float, float]:
    """`"start-end"` in seconds (TVQA's `ts` column, e.g. "12.5-30") → (start, end)."""
    start_text, dash, end_text = str(ts).strip().partition("-")
    try:
        if not dash:
            raise ValueError
        start, end = float(start_text), float(end_text)
    except ValueError:
        raise VideoError(f"ts {ts!r} is not a 'start-end' window in seconds (e.g. '12.5-30')") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise VideoError(f"ts {ts!r}: the window needs 0 <= start < end")
    return start, end


def clip_frames(total: int, num_frames: int, first: int = 0) -> ClipFrames:
    """IG-VLM's choice of `num_frames` frames out of a clip of `total` frames starting at frame `first`."""
    if num_frames < 1:
        raise VideoError(f"num_frames must be at least 1, got {num_frames}")
    interval = total // num_frames
    if interval == 0:
        raise VideoError(f"the clip has {total} frames, fewer than the {num_frames} frames asked for")
    return ClipFrames(first, interval, num_frames)


def sample_frames(
    source: VideoSource,
    num_frames: int = DEFAULT_NUM_FRAMES,
    ts: str | None = None,
    limits: VideoLimits = DEFAULT_LIMITS,
) -> list[Image.Image]:
    """IG-VLM's `num_frames` frames of a video (of the `ts="start-end"` seconds window when given), RGB."""
    name = _name(source)
    if num_frames > limits.max_frames:
        raise VideoLimitError(f"{name}: {num_frames} frames asked for; the limit is {limits.max_frames}")
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise VideoError(f"video file not found: {name}")
    try:
        container = av.open(
            os.fspath(source) if isinstance(source, os.PathLike) else source,
            options={"format_whitelist": VIDEO_FORMATS},
        )
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{name}: not a readable video ({e})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{name}: has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # FFmpeg has no decoder for the codec the container names
            raise VideoError(f"{name}: no decoder for its video codec")
        stream.thread_type = "AUTO"
        # The header's frame size is checked below, but a stream can switch to larger frames midway (a new
        # sequence header): FFmpeg then fails the decoding instead of allocating frames over the limit.
        stream.codec_context.options = {"max_pixels": str(limits.max_frame_pixels)}
        fps = _fps(stream, name)
        _check_size(stream, name, limits)
        frames = _choose_frames(container, stream, fps, num_frames, ts, name, limits)
        try:
            return _decode_at(container, stream, fps, frames.indices, name, limits)
        except av.error.FFmpegError as e:
            raise VideoError(f"{name}: decoding failed ({e})") from None


def frames_to_grid(frames: Sequence[Image.Image]) -> Image.Image:
    """IG-VLM's grid of `frames`: round(√n) per row, all resized to the smallest width and height, white fill."""
    if not frames:
        raise VideoError("frames_to_grid needs at least one frame")
    per_row = round(math.sqrt(len(frames)))
    width = min(frame.width for frame in frames)
    height = min(frame.height for frame in frames)
    cells = [_fit(frame, width, height) for frame in frames]
    rows = math.ceil(len(cells) / per_row)
    grid = Image.new("RGB", (per_row * width, rows * height), _WHITE)
    for position, cell in enumerate(cells):
        row, column = divmod(position, per_row)
        grid.paste(cell, (column * width, row * height))
    return grid


def add_num_frames_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--num-frames N` (or `--num_frames`): the frames in a video's grid, IG-VLM's 6 unless given."""
    parser.add_argument(
        "--num-frames",
        "--num_frames",
        dest="num_frames",
        type=int,
        default=DEFAULT_NUM_FRAMES,
        help=f"frames in a video's grid (IG-VLM: {DEFAULT_NUM_FRAMES}, 2 per row)",
    )


def video_to_grid(
    source: VideoSource,
    num_frames: int = DEFAULT_NUM_FRAMES,
    ts: str | None = None,
    limits: VideoLimits = DEFAULT_LIMITS,
) -> Image.Image:
    """The IG-VLM grid image of a video: `frames_to_grid(sample_frames(...))`."""
    return frames_to_grid(sample_frames(source, num_frames, ts, limits))


# -- helpers ---------------------------------------------------------------------------------------


def _name(source: VideoSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or "<video data>"


def _fps(stream: av.video.stream.VideoStream, name: str) -> Fraction:
    """Frames per second: the stream's average rate (its nominal rate when no average is known)."""
    for rate in (stream.average_rate, stream.base_rate, stream.guessed_rate):
        if rate:
            return Fraction(rate)
    raise VideoError(f"{name}: the video stream has no frame rate")


def _check_size(stream: av.video.stream.VideoStream, name: str, limits: VideoLimits) -> None:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_frame_pixels:
        raise VideoLimitError(
            f"{name}: frames of {width}x{height} pixels are over the limit of {limits.max_frame_pixels} pixels"
        )


def _duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: Fraction) -> float:
    """The video's duration in seconds as moviepy saw it: FFmpeg's 'Duration:' line, rounded to the centisecond."""
    if container.duration is not None and container.duration > 0:
        return ((container.duration + av.time_base // 200) // (av.time_base // 100)) / 100
    if stream.duration is not None and stream.time_base is not None:
        return round(float(stream.duration * stream.time_base), 2)
    if stream.frames:
        return round(float(stream.frames / fps), 2)
    return 0.0


def _choose_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    fps: Fraction,
    num_frames: int,
    ts: str | None,
    name: str,
    limits: VideoLimits,
) -> ClipFrames:
    duration = _duration_s(container, stream, fps)
    if duration <= 0:
        raise VideoError(f"{name}: the video's duration is unknown or zero")
    if duration > limits.max_duration_s:
        raise VideoLimitError(f"{name}: {duration:.0f} s long; the limit is {limits.max_duration_s:.0f} s")
    try:
        if ts is None:
            return clip_frames(int(duration * fps) + 1, num_frames)
        start, end = parse_ts(ts)
        if start >= duration:
            raise VideoError(f"ts {ts!r} starts after the video's end ({duration:.2f} s)")
        first = frame_index(start, fps)
        return clip_frames(frame_index(end, fps) - first + 1, num_frames, first)
    except VideoError as e:
        raise VideoError(f"{name}: {e}") from None


def _decode_at(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    fps: Fraction,
    indices: Sequence[int],
    name: str,
    limits: VideoLimits,
) -> list[Image.Image]:
    """The frames at `indices` (increasing), decoding forward and seeking only to jump far ahead."""
    decoder = _Decoder(container, stream, fps, name, limits)
    images = []
    for index in indices:
        frame = decoder.frame_at(index)
        if frame is None:
            break
        images.append(frame.to_image())
    if len(images) < len(indices):
        if decoder.last_frame is None:
            raise VideoError(f"{name}: the video has no frames")
        # moviepy, and so IG-VLM, gives the last frame again for times past the end of the video.
        logger.warning(
            "%s: frames %s lie past the video's end; its last frame stands in for them",
            name,
            list(indices[len(images) :]),
        )
        last = decoder.last_frame.to_image()
        images += [last.copy() for _ in indices[len(images) :]]
    return images


class _Decoder:
    """Walks a video stream forward, knowing each decoded frame's position (its index in the stream).

    A frame's position comes from its timestamp, relative to the first frame's; frames without a
    timestamp are counted instead, and then the decoder never seeks (a seek would lose the count).
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        fps: Fraction,
        name: str,
        limits: VideoLimits,
    ):
        self.container, self.stream, self.fps, self.name, self.limits = container, stream, fps, name, limits
        self.frames: Iterator[av.VideoFrame] = container.decode(stream)
        self.first_pts: int | None = None
        self.position = -1
        """Position of the last decoded frame."""
        self.last_frame: av.VideoFrame | None = None
        self.decoded = 0
        self.can_seek = True

    def frame_at(self, index: int) -> av.VideoFrame | None:
        """The first frame at or after position `index`; None when the stream ends before it."""
        frame = self._next() if self.first_pts is None else None  # the first frame fixes where positions start
        if self.can_seek and self.first_pts is not None and index - self.position > _SEEK_AHEAD_FRAMES:
            frame = self._seek_near(index)
        elif frame is None:
            frame = self._next()
        return self._walk_to(index, frame)

    def _seek_near(self, index: int) -> av.VideoFrame | None:
        """Seek to the keyframe before position `index` and decode its first frame."""
        # A frame at position `index` lies within half a frame of index/fps, the next one at least half a frame
        # after it: aiming a quarter frame late finds a keyframe at `index` itself, and never one after it.
        seconds = (Fraction(index) + Fraction(1, 4)) / self.fps
        self._seek(self.first_pts + int(seconds / self.stream.time_base))
        frame = self._next()
        if frame is not None and self.position > index:  # the seek overshot: walk from the start instead
            self.can_seek = False
            self._seek(self.first_pts)
            frame = self._next()
        return frame

    def _walk_to(self, index: int, frame: av.VideoFrame | None) -> av.VideoFrame | None:
        while frame is not None and self.position < index:
            frame = self._next()
        return frame

    def _seek(self, pts: int) -> None:
        self.container.seek(max(pts, self.first_pts), stream=self.stream, backward=True, any_frame=False)
        self.frames = self.container.decode(self.stream)
        self.position = -1

    def _next(self) -> av.VideoFrame | None:
        if self.decoded >= self.limits.max_decoded_frames:
            raise VideoLimitError(
                f"{self.name}: decoded {self.decoded} frames without reaching the ones asked for; "
                f"the limit is {self.limits.max_decoded_frames}"
            )
        frame = next(self.frames, None)
        if frame is None:
            return None
        self.decoded += 1
        if frame.pts is None:
            self.can_seek = False
            self.position += 1
        else:
            if self.first_pts is None:
                self.first_pts = frame.pts
            self.position = round((frame.pts - self.first_pts) * self.stream.time_base * self.fps)
        self.last_frame = frame
        return frame


def _fit(frame: Image.Image, width: int, height: int) -> Image.Image:
    frame = frame.convert("RGB")
    return frame if frame.size == (width, height) else frame.resize((width, height), Image.Resampling.BILINEAR)
