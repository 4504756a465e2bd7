"""Checking an upload in a child process: its container, its length, and a whole decode at the
model's frame rate and size under the media limits, with a limit on memory (``RLIMIT_AS``) set
before anything is imported and a limit on time the server enforces. A hostile file can then cost
the server neither gigabytes nor its one grounding worker: only an upload that decoded here is
ever decoded by the server.

Run as ``python -m damo.app.uploads PATH FPS SIZE MAX_FRAMES MEMORY_MB`` (``SIZE`` ``native`` for
frames at their own size); prints one JSON line, ``{"duration", "ctype", "suffix"}`` or
``{"error"}``. Imports numpy and PyAV only.
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

# FFmpeg demuxer name -> (content type, file suffix). Matroska holding only WebM codecs is served as WebM.
CONTAINERS = {
    "mov,mp4,m4a,3gp,3g2,mj2": ("video/mp4", ".mp4"),
    "matroska,webm": ("video/x-matroska", ".mkv"),
    "avi": ("video/x-msvideo", ".avi"),
    "ogg": ("video/ogg", ".ogv"),
    "mpeg": ("video/mpeg", ".mpg"),
    "mpegts": ("video/mp2t", ".ts"),
    "flv": ("video/x-flv", ".flv"),
    "asf": ("video/x-ms-asf", ".asf"),
}
WEBM_CODECS = {"vp8", "vp9", "av1", "opus", "vorbis"}


def container_type(path: Path) -> tuple[str, str]:
    """(content type, suffix) of a media file from the container its demuxer reports, never its name.

    Raises ``ValueError`` for containers this demo does not serve (images, raw streams, ...).
    """
    import av

    with av.open(str(path)) as c:
        fmt = c.format.name
        codecs = {st.codec_context.name for st in c.streams if st.type in ("video", "audio")}
    if fmt not in CONTAINERS:
        raise ValueError(f"its container ({fmt}) is not one this demo serves; upload MP4, WebM, Matroska, AVI or Ogg")
    if fmt == "matroska,webm" and codecs <= WEBM_CODECS:
        return "video/webm", ".webm"
    return CONTAINERS[fmt]


def check(path: Path, fps: float, size: int | None, max_frames: int) -> dict:
    """The upload's length and content type once it decoded whole at ``fps`` and ``size`` (None:
    native) within the media limits; MediaError or ValueError when it is not a video this demo grounds."""
    from damo.media import MediaLimits, decode_clip, probe

    limits = MediaLimits(max_frames=max_frames)
    info = probe(path, limits)
    ctype, suffix = container_type(path)
    decode_clip(path, fps, size, limits=limits, audio_dtype="int16")
    return {"duration": info["duration"], "ctype": ctype, "suffix": suffix}


def main(argv: list[str]) -> int:
    path, fps, size, max_frames, memory_mb = argv
    limit = int(memory_mb) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import av

    from damo.media import MediaError

    try:
        out = check(Path(path), float(fps), None if size == "native" else int(size), int(max_frames))
    except (MediaError, ValueError, av.FFmpegError) as e:
        out = {"error": str(e)}
    except MemoryError:
        out = {"error": f"decoding it needs more than {memory_mb} MB"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
