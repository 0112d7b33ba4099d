"""Audio I/O: read any format soundfile decodes (local or any fsspec URL, e.g. s3://), whole or
streamed (`open_sound`), resample with soxr, downmix, write WAV/FLAC atomically, and the output
formats of `karaoke separate`.

Arrays are float32 of shape (n_channels, n_samples); mono signals are (n_samples,).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from karaoke.errors import AudioError
from karaoke.storage import is_url, open_fs

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
# Blocks (n_channels, n) of audio, the same ones each time it is called.
BlockSource = Callable[[], Iterable[np.ndarray]]
# Read size of a file opened at a URL: a few round trips per song, a few MiB held per open file.
URL_BLOCK_BYTES = 8 * 2**20


def is_audio_file(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS)


def _read_bytes(path: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise AudioError(f"{path}: audio file not found") from None


def read_audio(path: str | Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode `path` to float32 (n_channels, n_samples), resampled to `sample_rate` when given.

    Raises `AudioError` naming the file when it is missing, corrupt, truncated, empty or non-finite.
    Returns the audio and its sample rate (the requested one, or the file's own).
    """
    import soundfile as sf

    path = str(path)
    source: str | io.BytesIO = io.BytesIO(_read_bytes(path)) if is_url(path) else path
    if isinstance(source, str) and not os.path.exists(source):
        raise AudioError(f"{path}: audio file not found")
    try:
        with sf.SoundFile(source) as handle:
            file_rate, expected = handle.samplerate, handle.frames
            check_not_truncated(handle, path)
            data = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({exc}); re-export it as WAV or FLAC") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: audio file is empty (0 samples)")
    check_decoded_length(expected, data.shape[0], path)
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: audio contains NaN or Inf samples")
    audio = np.ascontiguousarray(data.T)
    if sample_rate is not None and sample_rate != file_rate:
        audio = resample(audio, file_rate, sample_rate)
        file_rate = sample_rate
    return audio, file_rate


@contextmanager
def open_sound(path: str | Path) -> Iterator:
    """An open `soundfile.SoundFile` for reading a local path or a URL (read through fsspec in
    blocks of `URL_BLOCK_BYTES`, so a long file is never held whole), checked by
    `check_not_truncated`. `AudioError` naming `path` when it is missing or cannot be decoded."""
    import soundfile as sf

    path = str(path)
    with ExitStack() as stack:
        source = path
        if is_url(path):
            fs, key = open_fs(path)
            try:
                source = stack.enter_context(fs.open(key, "rb", block_size=URL_BLOCK_BYTES))
            except FileNotFoundError:
                raise AudioError(f"{path}: audio file not found") from None
        try:
            handle = stack.enter_context(sf.SoundFile(source))
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise AudioError(f"{path}: cannot decode audio ({exc}); re-export it as WAV or FLAC") from None
        check_not_truncated(handle, path)
        yield handle


def file_blocks(path: str, block_seconds: float) -> BlockSource:
    """Blocks (n_channels, n) of a file (a local path or URL) at its own rate; `AudioError` naming
    it when it cannot be decoded, is truncated (as `karaoke prepare` refuses it) or holds NaN or Inf."""

    def blocks() -> Iterator[np.ndarray]:
        with open_sound(path) as handle:
            size, decoded = max(int(block_seconds * handle.samplerate), 1), 0
            while True:
                data = handle.read(size, dtype="float32", always_2d=True)
                decoded += data.shape[0]
                if not np.all(np.isfinite(data)):
                    raise AudioError(f"{path}: audio contains NaN or Inf samples")
                if data.shape[0]:
                    yield data.T
                if data.shape[0] < size:
                    check_decoded_length(handle.frames, decoded, path)
                    return

    return blocks


def check_not_truncated(handle, path: str) -> None:
    """Raise `AudioError` when an open `soundfile.SoundFile`'s data chunk is cut off: libsndfile
    quietly shortens such a WAV, and only its header log says so."""
    cut = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", handle.extra_info, re.MULTILINE)
    if cut and int(cut.group(2)) < int(cut.group(1)):
        raise AudioError(
            f"{path}: truncated audio: the header promises {cut.group(1)} data bytes, the file holds {cut.group(2)}"
        )


def check_decoded_length(expected: int, decoded: int, path: str) -> None:
    """Raise `AudioError` when fewer samples decode than the header promises (a cut compressed file)."""
    if 0 < expected < 2**62 and decoded < expected:
        raise AudioError(f"{path}: truncated audio: header promises {expected} samples, only {decoded} decode")


def resample(audio: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """Resample (n_channels, n_samples) or (n_samples,) audio with soxr's high-quality filter (rates in
    Hz; a non-integer rate is how `karaoke.features` pitch-shifts a voice)."""
    import soxr

    if from_rate == to_rate:
        return audio
    out = soxr.resample(np.asarray(audio, dtype=np.float32).T, from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def resampled_blocks(blocks: BlockSource, from_rate: int, to_rate: int) -> BlockSource:
    """`blocks` (n_channels, n) resampled as they stream by, equal to `resample` of the whole signal
    (soxr's streaming resampler with the same filter)."""
    import soxr

    if from_rate == to_rate:
        return blocks

    def resampled() -> Iterator[np.ndarray]:
        stream, n_channels = None, 0
        for block in blocks():
            if stream is None:
                n_channels = block.shape[0]
                stream = soxr.ResampleStream(from_rate, to_rate, n_channels, dtype="float32", quality="HQ")
            yield np.ascontiguousarray(stream.resample_chunk(np.ascontiguousarray(block.T, dtype=np.float32)).T)
        if stream is not None:
            yield np.ascontiguousarray(stream.resample_chunk(np.zeros((0, n_channels), np.float32), last=True).T)

    return resampled


def to_mono(audio: np.ndarray) -> np.ndarray:
    """Average the channels of (n_channels, n_samples) audio into (n_samples,)."""
    return audio if audio.ndim == 1 else audio.mean(axis=0, dtype=np.float32)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write (n_samples,) or (n_channels, n_samples) audio; WAV as 32-bit float, FLAC as 24-bit PCM.

    The file appears complete or not at all: it is written beside the target and renamed.
    FLAC cannot hold samples beyond [-1, 1]; such audio is refused rather than clipped.
    """
    import soundfile as sf

    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    ext = path.suffix.lower()
    if ext == ".wav":
        fmt, subtype = "WAV", "FLOAT"
    elif ext == ".flac":
        fmt, subtype = "FLAC", "PCM_24"
        if np.abs(audio).max(initial=0.0) > 1.0:
            raise AudioError(f"{path}: samples exceed [-1, 1]; FLAC would clip them, write .wav instead")
    else:
        raise AudioError(f"{path}: unsupported output format {ext!r}; use .wav or .flac")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    sf.write(tmp, audio.T, sample_rate, format=fmt, subtype=subtype)
    os.replace(tmp, path)


# `karaoke separate --format/--bit-depth`: libsndfile's container and sample type for each.
OUTPUT_FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}
BIT_DEPTHS = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}
DEFAULT_BIT_DEPTH = {"wav": "32f", "flac": "24"}


def output_format(audio_format: str, bit_depth: str | None = None) -> tuple[str, str]:
    """(libsndfile format, subtype) of an output `audio_format` ("wav", "flac", "mp3") at
    `bit_depth` ("16", "24", "32f"; default 32f for WAV, 24 for FLAC). `ConfigError` naming the
    flag for a depth the format cannot hold (FLAC holds integers, MP3 has no bit depth) and for MP3
    when this libsndfile cannot write it."""
    import soundfile as sf

    from karaoke.errors import ConfigError

    name = audio_format.lower()
    if name not in OUTPUT_FORMATS:
        raise ConfigError(f"--format {audio_format}: choose one of {', '.join(OUTPUT_FORMATS)}")
    fmt = OUTPUT_FORMATS[name]
    if name == "mp3":
        if bit_depth is not None:
            raise ConfigError("--bit-depth has no effect with --format mp3 (MP3 is lossy, it has no bit depth); leave it out")
        if not sf.check_format("MP3", "MPEG_LAYER_III"):
            raise ConfigError(
                f"--format mp3: this libsndfile ({sf.__libsndfile_version__}) cannot write MP3 "
                "(1.1.0 or later with LAME is needed); use --format flac"
            )
        return fmt, "MPEG_LAYER_III"
    depth = bit_depth or DEFAULT_BIT_DEPTH[name]
    if depth not in BIT_DEPTHS:
        raise ConfigError(f"--bit-depth {depth}: choose one of {', '.join(BIT_DEPTHS)}")
    if name == "flac" and depth == "32f":
        raise ConfigError("--bit-depth 32f: FLAC holds integer samples only; use --bit-depth 24 or --format wav")
    return fmt, BIT_DEPTHS[depth]
