"""llava.video on clips written at test time: which frames IG-VLM's rule picks, the grid, `ts` windows, errors, limits.

Every frame of a test clip (`llava.testing.write_test_video`) carries its index, drawn in as binary
cells, so a test reads back which frame of the video landed in each place of the result.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from llava.testing import read_frame_index, video_frame, write_test_video
from llava.video import (
    VideoError,
    VideoLimitError,
    VideoLimits,
    clip_frames,
    frames_to_grid,
    parse_ts,
    sample_frames,
    video_to_grid,
)


def indices(frames: list[Image.Image]) -> list[int]:
    return [read_frame_index(frame) for frame in frames]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 frames at 25 fps (12.00 s): IG-VLM counts int(12.00 * 25) + 1 = 301 frames."""
    return write_test_video(tmp_path_factory.mktemp("video") / "clip.mp4", 300)


def test_the_test_frames_carry_their_index() -> None:
    assert all(read_frame_index(video_frame(i)) == i for i in [*range(0, 4096, 7), 4095])


@pytest.mark.parametrize(
    ("num_frames", "expected"),
    [
        (6, [0, 50, 100, 150, 200, 250]),  # interval floor(301 / 6) = 50
        (4, [0, 75, 150, 225]),
        (1, [0]),
        (9, [0, 33, 66, 99, 132, 165, 198, 231, 264]),
    ],
)
def test_frames_at_multiples_of_the_interval(clip: Path, num_frames: int, expected: list[int]) -> None:
    assert indices(sample_frames(clip, num_frames)) == expected


@pytest.mark.parametrize(
    ("name", "codec", "num_frames", "fps", "expected"),
    [
        # 36 frames at 25 fps: 1.44 s, counted 37; interval 6.
        ("short.mp4", "libx264", 36, 25, [0, 6, 12, 18, 24, 30]),
        # MPEG-4 with B-frames in AVI (MSVD's container): timestamps start at 1, positions at 0.
        ("msvd.avi", "mpeg4", 299, 25, [0, 50, 100, 150, 200, 250]),
        ("clip.webm", "libvpx", 250, 24, [0, 41, 82, 123, 164, 205]),  # 10.42 s, counted 251
        # NTSC rate: 173 frames are 5.77 s, counted int(5.77 * 29.97) + 1 = 173; interval 28.
        ("ntsc.mkv", "libx264", 173, Fraction(30000, 1001), [0, 28, 56, 84, 112, 140]),
    ],
)
def test_containers_and_codecs(
    tmp_path: Path, name: str, codec: str, num_frames: int, fps: int | Fraction, expected: list[int]
) -> None:
    path = write_test_video(tmp_path / name, num_frames, fps=fps, codec=codec)
    assert indices(sample_frames(path, 6)) == expected


def test_a_long_clip_decodes_only_near_the_frames_it_needs(tmp_path: Path) -> None:
    # 1000 frames, a keyframe every 12: seeking to each of the 6 frames decodes a few dozen frames.
    path = write_test_video(tmp_path / "long.mp4", 1000, keyframe_interval=12)
    tight = VideoLimits(max_decoded_frames=150)
    assert indices(sample_frames(path, 6, limits=tight)) == [0, 166, 332, 498, 664, 830]
    # One keyframe only: every frame before the last one asked for must be decoded, and the limit stops it.
    dense = write_test_video(tmp_path / "one_keyframe.mp4", 1000, keyframe_interval=1000)
    with pytest.raises(VideoLimitError, match="decoded 150 frames .* the limit is 150"):
        sample_frames(dense, 6, limits=tight)
    assert indices(sample_frames(dense, 6)) == [0, 166, 332, 498, 664, 830]


def test_a_frame_on_a_keyframe_is_decoded_alone(tmp_path: Path) -> None:
    # 1200 frames (48.00 s: counted 1201), a keyframe every 200: the six frames are keyframes, each sought directly.
    path = write_test_video(tmp_path / "keys.mp4", 1200, keyframe_interval=200)
    six = VideoLimits(max_decoded_frames=6)
    assert indices(sample_frames(path, 6, limits=six)) == [0, 200, 400, 600, 800, 1000]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("5-11", [125, 150, 175, 200, 225, 250]),  # frames 125..275: 151, interval 25
        ("1.1-3.35", [27, 36, 45, 54, 63, 72]),  # from int(27.5) = 27 to int(83.75) = 83: 57 frames, interval 9
        ("0-12", [0, 50, 100, 150, 200, 250]),
    ],
)
def test_ts_windows(clip: Path, ts: str, expected: list[int]) -> None:
    assert indices(sample_frames(clip, 6, ts=ts)) == expected


def test_a_window_past_the_end_repeats_the_last_frame_as_igvlm_did(clip: Path) -> None:
    # 10-30 s: frames 250..750 (501, interval 83), but the clip ends at frame 299.
    assert indices(sample_frames(clip, 6, ts="10-30")) == [250, 299, 299, 299, 299, 299]


def test_parse_ts() -> None:
    assert parse_ts("12.5-30") == (12.5, 30.0)
    assert parse_ts(" 0-1 ") == (0.0, 1.0)
    for bad in ("12.5", "a-b", "5-5", "7-3", "-1-3", "nan-3", ""):
        with pytest.raises(VideoError, match="ts"):
            parse_ts(bad)


def test_clip_frames_rule() -> None:
    assert clip_frames(301, 6).indices == [0, 50, 100, 150, 200, 250]
    assert clip_frames(6, 6).indices == [0, 1, 2, 3, 4, 5]
    assert clip_frames(151, 6, first=125).indices == [125, 150, 175, 200, 225, 250]
    with pytest.raises(VideoError, match="5 frames, fewer than the 6 frames asked for"):
        clip_frames(5, 6)


# -- the grid ---------------------------------------------------------------------------------------


def colour_frames(sizes: list[tuple[int, int]]) -> list[Image.Image]:
    return [Image.new("RGB", size, (10 * i, 200 - 10 * i, 40 + 5 * i)) for i, size in enumerate(sizes)]


@pytest.mark.parametrize(
    ("count", "per_row", "rows"),
    [(1, 1, 1), (2, 1, 2), (3, 2, 2), (4, 2, 2), (5, 2, 3), (6, 2, 3), (7, 3, 3), (8, 3, 3), (9, 3, 3), (10, 3, 4)],
)
def test_grid_layout(count: int, per_row: int, rows: int) -> None:
    frames = colour_frames([(30, 20)] * count)
    grid = frames_to_grid(frames)
    assert grid.size == (per_row * 30, rows * 20)
    pixels = np.asarray(grid)
    for position in range(per_row * rows):
        row, column = divmod(position, per_row)
        cell = pixels[row * 20 : (row + 1) * 20, column * 30 : (column + 1) * 30]
        expected = frames[position].getpixel((0, 0)) if position < count else (255, 255, 255)
        assert (cell == expected).all(), f"cell {position} of {count}"


def test_grid_resizes_every_frame_to_the_smallest_width_and_height() -> None:
    frames = colour_frames([(40, 30), (50, 20), (60, 40), (45, 25)])
    grid = frames_to_grid(frames)
    assert grid.size == (2 * 40, 2 * 20)
    assert grid.getpixel((40 + 20, 10)) == frames[1].getpixel((0, 0))


def test_video_grid_keeps_time_order(clip: Path) -> None:
    grid = video_to_grid(clip)
    assert grid.size == (2 * 96, 3 * 64)
    cells = [grid.crop((c * 96, r * 64, (c + 1) * 96, (r + 1) * 64)) for r in range(3) for c in range(2)]
    assert indices(cells) == [0, 50, 100, 150, 200, 250]


def test_frames_to_grid_needs_frames() -> None:
    with pytest.raises(VideoError, match="at least one frame"):
        frames_to_grid([])


# -- sources, errors and limits --------------------------------------------------------------------------


def test_a_video_from_memory(clip: Path) -> None:
    assert indices(sample_frames(io.BytesIO(clip.read_bytes()), 6)) == [0, 50, 100, 150, 200, 250]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"video file not found: .*nothing\.mp4"):
        sample_frames(tmp_path / "nothing.mp4")


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 100, b"\x1a\x45\xdf\xa3" + bytes(200)])
def test_unreadable_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=r"broken\.mp4"):
        sample_frames(path)


def test_playlists_are_not_followed(tmp_path: Path, clip: Path) -> None:
    # An HLS playlist is a "video" FFmpeg would assemble from the files it names: refused, in a file or in memory.
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12.0,\n{clip}\n#EXT-X-ENDLIST\n"
    (tmp_path / "list.m3u8").write_text(playlist)
    with pytest.raises(VideoError, match=r"list\.m3u8: not a readable video"):
        sample_frames(tmp_path / "list.m3u8")
    with pytest.raises(VideoError, match="<video data>: not a readable video"):
        sample_frames(io.BytesIO(playlist.encode()))


def test_a_file_without_video(tmp_path: Path) -> None:
    path = tmp_path / "sound.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match=r"sound\.mkv: has no video stream"):
        sample_frames(path)
    # A container that is not a video format at all is not opened.
    wav = tmp_path / "sound.wav"
    with av.open(str(wav), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match=r"sound\.wav: not a readable video"):
        sample_frames(wav)


def test_a_video_with_no_frames(tmp_path: Path) -> None:
    # The packets of a clip without its keyframe: the decoder has nothing to start from and outputs no frame.
    with av.open(str(write_test_video(tmp_path / "full.mkv", 50, keyframe_interval=100))) as source:
        with av.open(str(tmp_path / "no_keyframe.mkv"), "w") as target:
            stream = target.add_stream_from_template(source.streams.video[0])
            for packet in source.demux(source.streams.video[0]):
                if packet.dts is not None and not packet.is_keyframe:
                    packet.stream = stream
                    target.mux(packet)
    with pytest.raises(VideoError, match=r"no_keyframe\.mkv: the video has no frames"):
        sample_frames(tmp_path / "no_keyframe.mkv")


def test_undecodable_frames(tmp_path: Path) -> None:
    data = bytearray(write_test_video(tmp_path / "clip.mp4", 50).read_bytes())
    start = data.find(b"mdat") + 4  # the frames' data: zeroed, while the index that points at it stays
    size = int.from_bytes(data[start - 8 : start - 4], "big") - 8
    data[start : start + size] = bytes(size)
    (tmp_path / "zeroed.mp4").write_bytes(bytes(data))
    with pytest.raises(VideoError, match=r"zeroed\.mp4: decoding failed"):
        sample_frames(tmp_path / "zeroed.mp4")


def test_fewer_frames_than_asked(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "five.mp4", 5)  # 0.20 s: counted 6
    with pytest.raises(VideoError, match=r"five\.mp4: the clip has 6 frames, fewer than the 9 frames asked for"):
        sample_frames(path, 9)
    assert indices(sample_frames(path, 6)) == [0, 1, 2, 3, 4, 4]  # moviepy's count is one more than there are


def test_window_errors(clip: Path) -> None:
    with pytest.raises(VideoError, match=r"clip\.mp4: ts '20-30' starts after the video's end \(12\.00 s\)"):
        sample_frames(clip, ts="20-30")
    with pytest.raises(VideoError, match=r"clip\.mp4: the clip has 3 frames, fewer than the 6"):
        sample_frames(clip, ts="1-1.1")


def test_limits(clip: Path) -> None:
    with pytest.raises(VideoLimitError, match="65 frames asked for; the limit is 64"):
        sample_frames(clip, 65)
    with pytest.raises(VideoLimitError, match="96x64 pixels are over the limit of 6000 pixels"):
        sample_frames(clip, limits=VideoLimits(max_frame_pixels=6000))
    with pytest.raises(VideoLimitError, match="12 s long; the limit is 10 s"):
        sample_frames(clip, limits=VideoLimits(max_duration_s=10))
    with pytest.raises(VideoError, match="num_frames must be at least 1"):
        sample_frames(clip, 0)
