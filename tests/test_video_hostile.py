"""llava.video on hostile files: what a server must survive when the video comes from a client. Both cases turned
up among some 14,000 broken clips (the mutations that tests/serve/test_serve_fuzz.py sends) fed to the server's
video decoding."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import pytest

from llava.testing import video_frame, write_test_video
from llava.video import VideoError, VideoLimits, sample_frames


def test_a_video_stream_of_an_unknown_codec_is_a_video_error(tmp_path: Path) -> None:
    # Matroska names its codec in the file: an id FFmpeg does not know leaves the stream without a decoder.
    raw = write_test_video(tmp_path / "clip.mkv", 12).read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_UNKNOWN/CODEC")
    with pytest.raises(VideoError, match="<video data>: no decoder for its video codec"):
        sample_frames(io.BytesIO(raw))


def write_resizing_avi(path: Path, large: tuple[int, int], frames_each: int = 12) -> Path:
    """An MPEG-4 AVI whose header and first frames are 96x64 and whose later frames are `large`: a new sequence
    header in the middle of the stream, how a hostile upload would slip past a check of the header."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 96, 64
        stream.pix_fmt = "yuv420p"
        for part, size in enumerate(((96, 64), large)):
            encoder = av.CodecContext.create("mpeg4", "w")
            encoder.width, encoder.height = size
            encoder.pix_fmt, encoder.time_base, encoder.framerate = "yuv420p", Fraction(1, 25), 25
            for index in range(frames_each):
                frame = av.VideoFrame.from_image(video_frame(index).resize(size))
                frame.pts = part * frames_each + index
                for packet in encoder.encode(frame):
                    packet.stream = stream
                    out.mux(packet)
            for packet in encoder.encode(None):
                packet.stream = stream
                out.mux(packet)
    return path


def test_frames_larger_than_the_header_says_are_never_decoded(tmp_path: Path) -> None:
    path = write_resizing_avi(tmp_path / "resizing.avi", large=(1280, 960))
    with av.open(str(path)) as container:
        assert [(f.width, f.height) for f in container.decode(video=0)][11:13] == [(96, 64), (1280, 960)]
    # Frames 0, 4, 8 are small and 12, 16, 20 large: within a limit that allows them, all six are read...
    roomy = sample_frames(path, 6, limits=VideoLimits(max_frame_pixels=1280 * 960))
    assert [frame.size for frame in roomy] == [(96, 64)] * 3 + [(1280, 960)] * 3
    # ...and under one that the header passes but the large frames break, FFmpeg refuses to make them.
    with pytest.raises(VideoError, match=r"resizing\.avi: decoding failed"):
        sample_frames(path, 6, limits=VideoLimits(max_frame_pixels=200 * 200))
