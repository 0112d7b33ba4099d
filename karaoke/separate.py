"""Separating audio with a mask DNN (paper Eq. 1-2): in-memory arrays and audio files of any length.

Long audio is processed in blocks (`karaoke.streaming` frames and overlap-adds it,
`karaoke.inference.StreamingSoftMask` applies Eq. 1 carrying T - 1 frames over), so the result
equals processing the whole song at once (to float rounding). The per-song unit scale (max mixture
magnitude) is needed before the first window is predicted, so files are read twice: a first pass
computes only the STFT magnitude's maximum.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from karaoke.config import ExperimentConfig, StftConfig
from karaoke.errors import AudioError
from karaoke.masks import alpha_masks
from karaoke.streaming import Framer, OverlapAdd, downmix

BlockSource = Callable[[], Iterable[np.ndarray]]


def _scale_pass(blocks: Iterable[np.ndarray], stft_cfg: StftConfig, device: torch.device, name: str) -> float:
    """Per-song unit scale: the maximum of the mono mixture's STFT magnitude (first pass)."""
    framer, peak = Framer(stft_cfg, device), 0.0
    for block in blocks:
        spec = framer.push(block)
        if spec is not None:
            peak = max(peak, float(downmix(spec).abs().max()))
    spec = framer.finish(name)
    if spec is not None:
        peak = max(peak, float(downmix(spec).abs().max()))
    return peak if peak > 1e-12 else 1.0


def separate_stream(
    model: torch.nn.Module,
    config: ExperimentConfig,
    blocks: BlockSource,
    alpha: float,
    name: str = "<audio>",
    batch_windows: int = 256,
    keep_probability: bool = False,
    precision: str = "float32",
) -> Iterator[tuple[np.ndarray, np.ndarray] | np.ndarray]:
    """Separate audio given as blocks (n_channels, n) at the model's rate; `blocks()` must give the
    same blocks each time it is called (it is read twice).

    Yields (vocals, accompaniment) blocks, each (n_channels, m) float32, in order; the mask of a
    stereo signal comes from its mono downmix and is applied to every channel (binary or soft as
    `config.evaluation.mask` says). With
    `keep_probability`, finally yields the soft mask p (n_bins, n_frames) of Eq. 1.
    """
    from karaoke.inference import StreamingSoftMask

    device = next(model.parameters()).device
    scale = _scale_pass(blocks(), config.stft, device, name)
    framer = Framer(config.stft, device)
    masker = StreamingSoftMask(model, config.windows.n_frames, scale, batch_windows, precision)
    vocal_ola = accompaniment_ola = None
    waiting: list[torch.Tensor] = []  # complex frames whose p is not finished yet
    probabilities: list[np.ndarray] = []

    def separate(probability: torch.Tensor):
        nonlocal waiting
        if probability.shape[-1] == 0:
            return None
        spec = torch.cat(waiting, -1)
        ready, waiting = spec[..., : probability.shape[-1]], [spec[..., probability.shape[-1] :]]
        if keep_probability:
            probabilities.append(probability.cpu().numpy())
        vocal, accompaniment = alpha_masks(probability, alpha, config.evaluation.mask)
        return vocal_ola.push(ready * vocal), accompaniment_ola.push(ready * accompaniment)

    def frames_out(spec: torch.Tensor | None):
        nonlocal vocal_ola, accompaniment_ola
        if spec is None:
            return None
        if vocal_ola is None:
            vocal_ola = OverlapAdd(config.stft, spec.shape[0], device)
            accompaniment_ola = OverlapAdd(config.stft, spec.shape[0], device)
        waiting.append(spec)
        return separate(masker.push(downmix(spec).abs()))

    def as_numpy(pair):
        return tuple(part.cpu().numpy() for part in pair)

    for block in blocks():
        out = frames_out(framer.push(block))
        if out is not None:
            yield as_numpy(out)
    out = frames_out(framer.finish(name))
    if out is not None:
        yield as_numpy(out)
    out = separate(masker.finish())
    if out is not None:
        yield as_numpy(out)
    yield as_numpy((vocal_ola.finish(framer.n_samples), accompaniment_ola.finish(framer.n_samples)))
    if keep_probability:
        yield np.concatenate(probabilities, axis=-1)


@dataclass(frozen=True)
class Separation:
    """Separated audio, each (n_samples,) or (n_channels, n_samples), and the soft mask p
    (n_bins, n_frames) of Eq. 1, which thresholds at other alphas without re-running the network."""

    vocals: np.ndarray
    accompaniment: np.ndarray
    probability: np.ndarray


def separate_audio(
    model: torch.nn.Module, audio: np.ndarray, config: ExperimentConfig, alpha: float, chunk_samples: int | None = None
) -> Separation:
    """Separate in-memory audio (n_samples,) or (n_channels, n_samples) at the model's sample rate,
    in chunks of `chunk_samples` (default: all at once); chunked and whole results are equal."""
    audio = np.asarray(audio, dtype=np.float32)
    signal = audio[None] if audio.ndim == 1 else audio
    step = chunk_samples or signal.shape[-1]

    def blocks():
        return (signal[:, i : i + step] for i in range(0, signal.shape[-1], step))

    *pairs, probability = separate_stream(model, config, blocks, alpha, keep_probability=True)
    vocals = np.concatenate([v for v, _ in pairs], -1)
    accompaniment = np.concatenate([a for _, a in pairs], -1)
    if audio.ndim == 1:
        vocals, accompaniment = vocals[0], accompaniment[0]
    return Separation(vocals, accompaniment, probability)


def _file_blocks(path: str, model_rate: int, block_seconds: float) -> BlockSource:
    """Blocks (n_channels, n) of a file, resampled to `model_rate` by a streaming soxr resampler."""
    import soundfile as sf
    import soxr

    from karaoke.audio import check_decoded_length, check_not_truncated

    def blocks() -> Iterator[np.ndarray]:
        try:
            handle = sf.SoundFile(path)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{path}: cannot decode audio ({exc}); re-export it as WAV or FLAC") from None
        with handle:
            check_not_truncated(handle, path)
            rate, channels, decoded = handle.samplerate, handle.channels, 0
            resampler = soxr.ResampleStream(rate, model_rate, channels, dtype="float32") if rate != model_rate else None
            size = max(int(block_seconds * rate), 1)
            while True:
                data = handle.read(size, dtype="float32", always_2d=True)
                decoded += data.shape[0]
                last = data.shape[0] < size
                if last:
                    check_decoded_length(handle.frames, decoded, path)
                if not np.all(np.isfinite(data)):
                    raise AudioError(f"{path}: audio contains NaN or Inf samples")
                if resampler is not None:
                    data = resampler.resample_chunk(data, last=last)
                if data.shape[0]:
                    yield data.T
                if last:
                    return

    return blocks


def make_folder(folder: Path) -> None:
    """`folder` and its parents; `OutputError` naming it when a file stands in the way or it cannot
    be written."""
    from karaoke.errors import OutputError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write the separation there ({exc.strerror}); choose another --out") from None


def audio_info(path: Path):
    """soundfile's header information of an audio file; `AudioError` naming it when it cannot be
    decoded or its data is cut off."""
    import soundfile as sf

    from karaoke.audio import check_not_truncated

    try:
        with sf.SoundFile(str(path)) as handle:
            check_not_truncated(handle, str(path))
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({exc}); re-export it as WAV or FLAC") from None


def separate_file(
    path: str | Path,
    model: torch.nn.Module,
    config: ExperimentConfig,
    alpha: float,
    out_dir: str | Path,
    chunk_seconds: float = 30.0,
    on_block: Callable[[int], None] | None = None,
    precision: str = "float32",
) -> Path:
    """Separate one file of any format, rate, channel count and length into
    `out_dir/<name>/vocals.wav` and `accompaniment.wav` (32-bit float WAV at the model's rate, as many
    channels as the input). Memory is bounded by `chunk_seconds`. Both files appear only when done.
    `precision="bfloat16"` trades ~1e-2 of mask precision for speed (see `StreamingSoftMask`)."""
    import soundfile as sf

    path = Path(path)
    rate = config.corpus.sample_rate
    channels = audio_info(path).channels
    target = Path(out_dir) / path.stem
    created = not target.exists()
    make_folder(target)
    names = ("vocals", "accompaniment")
    partial = {n: target / f".{n}.wav.partial" for n in names}
    writers = {n: sf.SoundFile(partial[n], "w", rate, channels, subtype="FLOAT", format="WAV") for n in names}
    try:
        blocks = _file_blocks(str(path), rate, chunk_seconds)
        stream = separate_stream(model, config, blocks, alpha, name=str(path), precision=precision)
        for vocals, accompaniment in stream:
            writers["vocals"].write(vocals.T)
            writers["accompaniment"].write(accompaniment.T)
            if on_block is not None:
                on_block(vocals.shape[-1])
    except BaseException:
        for n in names:
            writers[n].close()
            partial[n].unlink(missing_ok=True)
        if created:
            target.rmdir()  # no empty folder left looking like a result
        raise
    for n in names:
        writers[n].close()
        os.replace(partial[n], target / f"{n}.wav")
    return target
