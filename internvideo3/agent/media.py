"""Media helpers of the agent's tools: shot boundaries (PySceneDetect on its PyAV backend), audio (PyAV) and speech
recognition (faster-whisper, optional). No own frame differencing, resampling or demuxing."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

WHISPER_SAMPLE_RATE = 16_000  # Hz: what Whisper models take (mono float32 in [-1, 1])
# Seconds decoded before the requested start: codecs with overlapped transforms (AAC, Opus) need the frames before the
# first one wanted to reconstruct it, so decoding from there gives the samples a decode from the file's start gives.
AUDIO_PREROLL_S = 0.5


def detect_shots(path: str, threshold: float = 27.0, min_scene_len: int = 15) -> list[tuple[float, float]]:
    """Shots of a video as (start_s, end_s) pairs in seconds, in order, covering the whole video.

    PySceneDetect's `ContentDetector` (HSV frame-to-frame content change; `threshold` on its 0-255 score, default 27
    as PySceneDetect; `min_scene_len` in frames) on the PyAV backend, so no OpenCV video I/O or FFmpeg binary is used.

    Raises:
        ImportError: PySceneDetect is not installed (`pip install "internvideo3[agent]"`).
        scenedetect.VideoOpenFailure: the file cannot be opened.
    """
    try:
        from scenedetect import ContentDetector, SceneManager, open_video
    except ImportError as err:  # pragma: no cover - the agent extra installs it
        raise ImportError('segment() needs PySceneDetect: pip install "internvideo3[agent]"') from err
    video = open_video(str(path), backend="pyav")
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold, min_scene_len=min_scene_len))
    manager.detect_scenes(video)
    scenes = manager.get_scene_list(start_in_scene=True)
    return [(float(start.seconds), float(end.seconds)) for start, end in scenes]


def has_audio(path: str) -> bool:
    """Whether the file has an audio stream (PyAV)."""
    import av

    with av.open(str(path)) as container:
        return bool(container.streams.audio)


def extract_audio(path: str, start_s: float, end_s: float, sample_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Audio of [start_s, end_s) seconds as mono float32 samples at `sample_rate` Hz, shape [N] with
    N ≈ (end_s - start_s) · sample_rate (less when the track ends earlier). Decoded and resampled by PyAV
    (`av.AudioResampler`), the first/default audio stream, from the packet before `start_s - AUDIO_PREROLL_S` (a PyAV
    seek), not from the start of the file.

    Raises:
        ValueError: the file has no audio stream (names the file), or start_s >= end_s.
    """
    import av

    if not start_s < end_s:
        raise ValueError(f"start_s={start_s} must be below end_s={end_s}")
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{os.fspath(path)!r} has no audio track")
        stream = container.streams.audio[0]
        if start_s - AUDIO_PREROLL_S > 0 and stream.time_base:
            # backward: to the last packet at or before that time (audio packets are all keyframes)
            container.seek(int((start_s - AUDIO_PREROLL_S) / stream.time_base), stream=stream)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks, first_time = [], None
        for frame in container.decode(stream):
            if frame.time is not None and frame.time >= end_s:
                break
            for out in resampler.resample(frame):
                if first_time is None:
                    first_time = frame.time or 0.0
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    offset = first_time or 0.0
    lo = max(0, int(round((start_s - offset) * sample_rate)))
    hi = max(lo, int(round((end_s - offset) * sample_rate)))
    return samples[lo:hi].astype(np.float32, copy=False)


def whisper_unavailable_reason(model_dir: str | None) -> str | None:
    """Why `transcribe` cannot run here, or None when faster-whisper and a model folder are both present."""
    if importlib.util.find_spec("faster_whisper") is None:
        return (
            "speech recognition is not available: faster-whisper is not installed (pip install faster-whisper) and "
            "it needs a local Whisper model folder (--whisper-model DIR)"
        )
    if not model_dir:
        return "speech recognition is not available: no Whisper model folder was given (--whisper-model DIR)"
    if not os.path.isdir(model_dir):
        return f"speech recognition is not available: Whisper model folder {model_dir!r} does not exist"
    return None


def load_whisper(model_dir: str):
    """faster-whisper's `WhisperModel` from the local folder `model_dir` (CPU, int8); load it once and reuse it."""
    from faster_whisper import WhisperModel

    return WhisperModel(model_dir, device="cpu", compute_type="int8")


def transcribe_audio(samples: np.ndarray, model, offset_s: float = 0.0) -> list[tuple[float, float, str]]:
    """Speech in `samples` (mono float32 at 16 kHz) as (start_s, end_s, text) segments, times shifted by `offset_s`
    seconds. `model`: a `WhisperModel` from `load_whisper`, or a local model folder (then loaded for this call)."""
    if isinstance(model, (str, os.PathLike)):
        model = load_whisper(model)
    segments, _info = model.transcribe(samples)
    return [(offset_s + s.start, offset_s + s.end, s.text.strip()) for s in segments]
