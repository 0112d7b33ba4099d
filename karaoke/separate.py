"""Separating audio with a mask DNN (paper Eq. 1-2): in-memory arrays and audio files of any length,
written at the input's sample rate, channel count and length.

The mask comes from the mono downmix resampled to the model's rate (the network's input); it is
applied to the STFT of every channel at the input's own rate (`karaoke.fullband`), so the output
keeps the full band of a 44.1 kHz song. Long audio is processed in blocks (`karaoke.streaming`
frames and overlap-adds it, `karaoke.inference.StreamingSoftMask` applies Eq. 1 carrying T - 1
frames over), so the result equals processing the whole song at once (to float rounding). The
per-song unit scale (max mixture magnitude) is needed before the first window is predicted, so
files are read twice: a first pass computes only the model-rate STFT magnitude's maximum.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from karaoke.audio import BlockSource, file_blocks
from karaoke.config import ExperimentConfig
from karaoke.errors import OutputError
from karaoke.fullband import HIGH_BAND, HighBand, MaskGrid, input_stft
from karaoke.masks import MaskMode, alpha_masks
from karaoke.streaming import Framer, OverlapAdd


class _ModelRateMono:
    """The mono downmix of input blocks (n_channels, n) at the model's rate, streamed through soxr."""

    def __init__(self, input_rate: int, model_rate: int) -> None:
        import soxr

        self.resampler = None if input_rate == model_rate else soxr.ResampleStream(input_rate, model_rate, 1, dtype="float32")

    def push(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        mono = block.mean(0, dtype=np.float32) if block.shape[0] > 1 else block[0].astype(np.float32, copy=False)
        if self.resampler is not None:
            mono = self.resampler.resample_chunk(mono, last=last)
        return mono[None]

    def flush(self) -> np.ndarray:
        return self.push(np.zeros((1, 0), np.float32), last=True)


def _scale_pass(blocks: Iterable[np.ndarray], config: ExperimentConfig, input_rate: int, device: torch.device, name: str) -> float:
    """Per-song unit scale: the maximum of the model-rate mono mixture's STFT magnitude (first pass)."""
    mono, framer, peak = _ModelRateMono(input_rate, config.corpus.sample_rate), Framer(config.stft, device), 0.0

    def add(spec: torch.Tensor | None) -> None:
        nonlocal peak
        if spec is not None and spec.numel():
            peak = max(peak, float(spec.abs().max()))

    for block in blocks:
        add(framer.push(mono.push(block)))
    add(framer.push(mono.flush()))
    add(framer.finish(name))
    return peak if peak > 1e-12 else 1.0


def separate_stream(
    model: torch.nn.Module,
    config: ExperimentConfig,
    blocks: BlockSource,
    sample_rate: int,
    mask: MaskMode,
    alpha: float,
    name: str = "<audio>",
    batch_windows: int = 256,
    keep_probability: bool = False,
    precision: str = "float32",
    high_band: HighBand = HIGH_BAND,
) -> Iterator[tuple[np.ndarray, np.ndarray] | np.ndarray]:
    """Separate audio given as blocks (n_channels, n) at `sample_rate`; `blocks()` must give the
    same blocks each time it is called (it is read twice).

    Yields (vocals, accompaniment) blocks, each (n_channels, m) float32 at `sample_rate`, in order,
    n_samples in all; the mask (binary at `alpha` by Eq. 2, or soft) comes from the mono downmix at
    the model's rate and is applied to every channel at full band (`karaoke.fullband`). With
    `keep_probability`, finally yields the soft mask p (n_bins, n_frames) of Eq. 1 on the model's grid.
    """
    from karaoke.inference import StreamingSoftMask

    device = next(model.parameters()).device
    model_rate = config.corpus.sample_rate
    scale = _scale_pass(blocks(), config, sample_rate, device, name)
    in_stft = input_stft(config.stft, model_rate, sample_rate)
    mono, model_framer, framer = _ModelRateMono(sample_rate, model_rate), Framer(config.stft, device), Framer(in_stft, device)
    masker = StreamingSoftMask(model, config.windows.n_frames, scale, batch_windows, precision)
    grid = MaskGrid(config.stft, model_rate, sample_rate, device, high_band)
    vocal_ola = accompaniment_ola = None
    waiting: list[torch.Tensor] = []  # input-rate complex frames whose p is not known yet
    probabilities: list[np.ndarray] = []

    def model_frames(spec: torch.Tensor | None) -> None:
        if spec is not None:
            add_probability(masker.push(spec[0].abs()))

    def add_probability(probability: torch.Tensor) -> None:
        if probability.shape[-1]:
            grid.push(probability)
            if keep_probability:
                probabilities.append(probability.cpu().numpy())

    def input_frames(spec: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray] | None:
        nonlocal waiting, vocal_ola, accompaniment_ola
        if spec is not None:
            if vocal_ola is None:
                vocal_ola = OverlapAdd(in_stft, spec.shape[0], device)
                accompaniment_ola = OverlapAdd(in_stft, spec.shape[0], device)
            waiting.append(spec)
        if not waiting:
            return None
        pending = torch.cat(waiting, -1)
        probability = grid.take(pending.shape[-1])
        n = probability.shape[-1]
        waiting = [pending[..., n:]]
        if n == 0:
            return None
        vocal, accompaniment = alpha_masks(probability, alpha, mask)
        ready = pending[..., :n]
        return vocal_ola.push(ready * vocal).cpu().numpy(), accompaniment_ola.push(ready * accompaniment).cpu().numpy()

    for block in blocks():
        model_frames(model_framer.push(mono.push(block)))
        out = input_frames(framer.push(block))
        if out is not None:
            yield out
    model_frames(model_framer.push(mono.flush()))
    model_frames(model_framer.finish(name))
    add_probability(masker.finish())
    grid.finish()
    out = input_frames(framer.finish(name))
    if out is not None:
        yield out
    yield vocal_ola.finish(framer.n_samples).cpu().numpy(), accompaniment_ola.finish(framer.n_samples).cpu().numpy()
    if keep_probability:
        yield np.concatenate(probabilities, axis=-1)


@dataclass(frozen=True)
class Separation:
    """Separated audio, each (n_samples,) or (n_channels, n_samples) at `sample_rate`, and the soft
    mask p (n_bins, n_frames) of Eq. 1 on the model's STFT grid, which thresholds at other alphas
    without re-running the network."""

    vocals: np.ndarray
    accompaniment: np.ndarray
    probability: np.ndarray
    sample_rate: int


def separate_audio(
    model: torch.nn.Module,
    audio: np.ndarray,
    config: ExperimentConfig,
    alpha: float | None = None,
    *,
    sample_rate: int | None = None,
    mask: MaskMode | None = None,
    chunk_samples: int | None = None,
    precision: str = "float32",
) -> Separation:
    """Separate in-memory audio (n_samples,) or (n_channels, n_samples) at `sample_rate` (default:
    the model's), in chunks of `chunk_samples` (default: all at once); chunked and whole results are
    equal. `mask` and `alpha` default to the model's `evaluation` section."""
    audio = np.asarray(audio, dtype=np.float32)
    signal = audio[None] if audio.ndim == 1 else audio
    rate = sample_rate or config.corpus.sample_rate
    step = chunk_samples or max(signal.shape[-1], 1)

    def blocks():
        return (signal[:, i : i + step] for i in range(0, signal.shape[-1], step))

    mode = mask or config.evaluation.mask
    *pairs, probability = separate_stream(
        model, config, blocks, rate, mode, config.evaluation.alpha if alpha is None else alpha,
        keep_probability=True, precision=precision,
    )
    vocals = np.concatenate([v for v, _ in pairs], -1)
    accompaniment = np.concatenate([a for _, a in pairs], -1)
    if audio.ndim == 1:
        vocals, accompaniment = vocals[0], accompaniment[0]
    return Separation(vocals, accompaniment, probability, rate)


def make_folder(folder: Path) -> list[Path]:
    """`folder` and its missing parents; returns the folders created (outermost first), for
    `remove_folders`. `OutputError` naming the folder when a file stands in the way or it cannot be
    written."""
    created = [p for p in (folder, *folder.parents) if not p.exists()][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write the separation there ({exc.strerror}); choose another --out") from None
    return created


def remove_folders(created: list[Path]) -> None:
    """Remove the folders `make_folder` created, innermost first, while they are empty: a failed
    song leaves no empty folder looking like a result."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def partial_file(target: Path, name: str) -> Path:
    """Where `name` (e.g. vocals.wav) is written in the folder `target` until it is complete."""
    return target / f".{name}.partial"


def discard_separation(folder: str | Path, track: str, audio_format: str) -> None:
    """Remove what a separation into `folder/<track>/` killed part-way (its process gone, so its own
    clean-up never ran) can have left, once the song is reported as failed: in a local folder the
    partial files and the folders left empty (up to `folder`); at a URL the files of an upload cut
    short."""
    from karaoke.storage import is_url, join, open_fs

    names = [f"{part}.{audio_format.lower()}" for part in ("vocals", "accompaniment")]
    if is_url(folder):
        fs, root = open_fs(join(folder, track))
        for name in names:
            if fs.exists(f"{root}/{name}"):
                fs.rm(f"{root}/{name}")
        return
    target = Path(folder, track)
    for name in names:
        partial_file(target, name).unlink(missing_ok=True)
    for directory in (Path(track), *Path(track).parents[:-1]):  # live/hifi, then live
        try:
            Path(folder, directory).rmdir()
        except OSError:  # not empty, or already gone
            return


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says: its length in samples per channel, rate and channels."""

    frames: int
    samplerate: int
    channels: int


def audio_info(path: str | Path) -> AudioInfo:
    """The header of an audio file (a local path or URL); `AudioError` naming it when it cannot be
    decoded or its data is cut off."""
    from karaoke.audio import open_sound

    with open_sound(path) as handle:
        return AudioInfo(handle.frames, handle.samplerate, handle.channels)


def separate_file(
    path: str | Path,
    target: str | Path,
    model: torch.nn.Module,
    config: ExperimentConfig,
    mask: MaskMode,
    alpha: float,
    audio_format: str = "wav",
    bit_depth: str | None = None,
    chunk_seconds: float = 30.0,
    on_block: Callable[[int], None] | None = None,
    precision: str = "float32",
) -> Path:
    """Separate one file (a local path or URL) of any format, rate, channel count and length into
    the local folder `target`: `vocals.<ext>` and `accompaniment.<ext>` at the input's rate,
    channel count and length (`karaoke.audio.output_format` for `audio_format` and `bit_depth`). Memory is bounded by
    `chunk_seconds`. Both files appear only when done; on failure nothing is left, not even the
    folders this call created. `on_block(n)` is called with each block's number of samples.
    `precision="bfloat16"` trades ~1e-2 of mask precision for speed (see `StreamingSoftMask`)."""
    import soundfile as sf

    from karaoke.audio import output_format

    path, target = str(path), Path(target)
    fmt, subtype = output_format(audio_format, bit_depth)
    info = audio_info(path)
    names, ext = ("vocals", "accompaniment"), audio_format.lower()
    created = make_folder(target)
    partial = {n: partial_file(target, f"{n}.{ext}") for n in names}
    writers: dict[str, sf.SoundFile] = {}
    try:
        for n in names:
            try:
                writers[n] = sf.SoundFile(partial[n], "w", info.samplerate, info.channels, subtype=subtype, format=fmt)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise OutputError(f"{target / f'{n}.{ext}'}: cannot write {fmt} at {info.samplerate} Hz ({exc}); choose another --format") from None
        clip = subtype not in ("FLOAT", "DOUBLE")  # integer and lossy formats hold [-1, 1] only
        blocks = file_blocks(path, chunk_seconds)
        for vocals, accompaniment in separate_stream(
            model, config, blocks, info.samplerate, mask, alpha, name=path, precision=precision
        ):
            for n, part in zip(names, (vocals, accompaniment)):
                writers[n].write(np.clip(part.T, -1.0, 1.0) if clip else part.T)
            if on_block is not None:
                on_block(vocals.shape[-1])
    except BaseException:
        for n in names:
            if n in writers:
                writers[n].close()
            partial[n].unlink(missing_ok=True)
        remove_folders(created)
        raise
    for n in names:
        writers[n].close()
        os.replace(partial[n], target / f"{n}.{ext}")
    return target
