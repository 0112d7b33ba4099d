"""From a vocal probability per time-frequency bin to separated audio (paper Eq. 2), for arrays
and for audio files of any length.

Long audio is processed in blocks with exact overlap handling, so the result equals processing the
whole song at once (to float rounding):
- `_Framer` cuts centred STFT frames from a stream of samples (the reflect padding of
  `karaoke.spectral.stft` is rebuilt at both ends), carrying the last n_fft - hop samples over;
- `karaoke.inference.StreamingSoftMask` applies Eq. 1, carrying T - 1 frames over;
- `_OverlapAdd` inverts masked frames by windowed overlap-add divided by the summed squared window
  (what `torch.istft` does), carrying n_fft - hop samples over.
The per-song unit scale (max mixture magnitude) is needed before the first window is predicted, so
files are read twice: a first pass computes only the STFT magnitude's maximum.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from karaoke.config import ExperimentConfig, StftConfig, save_config
from karaoke.errors import AudioError
from karaoke.masks import MaskMode, alpha_masks, apply_mask
from karaoke.spectral import istft

BlockSource = Callable[[], Iterable[np.ndarray]]


def masks_to_audio(
    mixture_stft: np.ndarray,
    probability: np.ndarray,
    alpha: float,
    stft_cfg: StftConfig,
    n_samples: int,
    mode: MaskMode = "binary",
) -> tuple[np.ndarray, np.ndarray]:
    """Vocal and accompaniment audio (each (..., n_samples)) from a complex mixture STFT
    (..., n_bins, n_frames) and a vocal probability (n_bins, n_frames), thresholded at alpha (Eq. 2;
    `mode` as in `karaoke.masks.alpha_masks`).

    A stereo STFT (2, n_bins, n_frames) gets the same mono-derived mask on both channels.
    """
    vocal_mask, accompaniment_mask = alpha_masks(probability, alpha, mode)
    vocals = istft(apply_mask(mixture_stft, vocal_mask), stft_cfg, n_samples)
    accompaniment = istft(apply_mask(mixture_stft, accompaniment_mask), stft_cfg, n_samples)
    return vocals.astype(np.float32), accompaniment.astype(np.float32)


class _Framer:
    """Centred STFT frames (n_channels, n_bins, k) from blocks of samples (n_channels, n)."""

    def __init__(self, stft_cfg: StftConfig, device: torch.device) -> None:
        self.n_fft, self.hop, self.pad = stft_cfg.n_fft, stft_cfg.hop_length, stft_cfg.n_fft // 2
        self.window = torch.hann_window(self.n_fft, device=device)
        self.device = device
        self._head: torch.Tensor | None = None  # samples seen before the left reflection is known
        self._buffer: torch.Tensor | None = None  # padded signal from the next frame's start on
        self._tail: torch.Tensor | None = None  # the last pad + 1 samples, for the right reflection
        self.n_samples = 0

    def push(self, block: np.ndarray) -> torch.Tensor | None:
        x = torch.as_tensor(np.ascontiguousarray(block), dtype=torch.float32).to(self.device)
        self.n_samples += x.shape[-1]
        self._tail = x if self._tail is None else torch.cat([self._tail, x], -1)
        self._tail = self._tail[:, -(self.pad + 1) :]
        if self._buffer is None:
            self._head = x if self._head is None else torch.cat([self._head, x], -1)
            if self._head.shape[-1] <= self.pad:
                return None
            # left reflect padding of torch.stft(center=True): x[pad], ..., x[1]
            x = torch.cat([self._head[:, 1 : self.pad + 1].flip(-1), self._head], -1)
            self._buffer, self._head = x[:, :0], None
        self._buffer = torch.cat([self._buffer, x], -1)
        return self._frames()

    def finish(self, name: str) -> torch.Tensor | None:
        if self._buffer is None:
            raise AudioError(f"{name}: too short to separate ({self.n_samples} samples; at least {self.pad + 1} needed)")
        self._buffer = torch.cat([self._buffer, self._tail[:, :-1].flip(-1)], -1)
        return self._frames()

    def _frames(self) -> torch.Tensor | None:
        k = (self._buffer.shape[-1] - self.n_fft) // self.hop + 1
        if k <= 0:
            return None
        used = (k - 1) * self.hop + self.n_fft
        spec = torch.stft(
            self._buffer[:, :used], self.n_fft, self.hop, window=self.window, center=False, return_complex=True
        )
        self._buffer = self._buffer[:, k * self.hop :]
        return spec


class _OverlapAdd:
    """Inverse of `_Framer`: audio (n_channels, m) finished so far from blocks of complex frames."""

    def __init__(self, stft_cfg: StftConfig, n_channels: int, device: torch.device) -> None:
        self.n_fft, self.hop, self.pad = stft_cfg.n_fft, stft_cfg.hop_length, stft_cfg.n_fft // 2
        self.window = torch.hann_window(self.n_fft, device=device)
        self._signal = torch.zeros(n_channels, 0, device=device)  # padded-signal coordinates
        self._envelope = torch.zeros(0, device=device)
        self._start = 0  # padded-signal index of _signal[:, 0]
        self._next = 0  # frames added so far
        self._emitted = 0  # output samples emitted so far

    def push(self, spec: torch.Tensor) -> torch.Tensor:
        k = spec.shape[-1]
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=-2) * self.window[:, None]  # (C, n_fft, k)
        span = (k - 1) * self.hop + self.n_fft
        added = torch.nn.functional.fold(frames, (1, span), (1, self.n_fft), stride=(1, self.hop))[:, 0, 0]
        squares = self.window.square()[None, :, None].expand(1, -1, k)
        envelope = torch.nn.functional.fold(squares, (1, span), (1, self.n_fft), stride=(1, self.hop))[0, 0, 0]
        offset = self._next * self.hop - self._start
        grow = offset + span - self._signal.shape[-1]
        if grow > 0:
            self._signal = torch.nn.functional.pad(self._signal, (0, grow))
            self._envelope = torch.nn.functional.pad(self._envelope, (0, grow))
        self._signal[:, offset : offset + span] += added
        self._envelope[offset : offset + span] += envelope
        self._next += k
        # Samples before the next frame's start receive nothing more.
        return self._emit(self._next * self.hop, None)

    def finish(self, n_samples: int) -> torch.Tensor:
        return self._emit(n_samples + self.pad, n_samples)

    def _emit(self, until: int, n_samples: int | None) -> torch.Tensor:
        n = until - self._start
        audio = self._signal[:, :n] / self._envelope[:n].clamp(min=1e-11)
        first = max(self.pad - self._start, 0)  # the left padding is not output
        self._signal, self._envelope, self._start = self._signal[:, n:], self._envelope[n:], until
        audio = audio[:, first:]
        if n_samples is not None:
            audio = audio[:, : max(n_samples - self._emitted, 0)]
        self._emitted += audio.shape[-1]
        return audio


def _downmix(spec: torch.Tensor) -> torch.Tensor:
    """STFT of the mono downmix (n_bins, k) from the channels' STFTs (n_channels, n_bins, k): the STFT
    is linear, so this is the mean (written as a sum: torch's complex mean is slow)."""
    return spec[0] if spec.shape[0] == 1 else spec.sum(0) / spec.shape[0]


def _scale_pass(blocks: Iterable[np.ndarray], stft_cfg: StftConfig, device: torch.device, name: str) -> float:
    """Per-song unit scale: the maximum of the mono mixture's STFT magnitude (first pass)."""
    framer, peak = _Framer(stft_cfg, device), 0.0
    for block in blocks:
        spec = framer.push(block)
        if spec is not None:
            peak = max(peak, float(_downmix(spec).abs().max()))
    spec = framer.finish(name)
    if spec is not None:
        peak = max(peak, float(_downmix(spec).abs().max()))
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
    framer = _Framer(config.stft, device)
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
            vocal_ola = _OverlapAdd(config.stft, spec.shape[0], device)
            accompaniment_ola = _OverlapAdd(config.stft, spec.shape[0], device)
        waiting.append(spec)
        return separate(masker.push(_downmix(spec).abs()))

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

    def blocks() -> Iterator[np.ndarray]:
        try:
            handle = sf.SoundFile(path)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{path}: cannot decode audio ({exc}); re-export it as WAV or FLAC") from None
        with handle:
            rate, channels = handle.samplerate, handle.channels
            resampler = soxr.ResampleStream(rate, model_rate, channels, dtype="float32") if rate != model_rate else None
            size = max(int(block_seconds * rate), 1)
            while True:
                data = handle.read(size, dtype="float32", always_2d=True)
                last = data.shape[0] < size
                if not np.all(np.isfinite(data)):
                    raise AudioError(f"{path}: audio contains NaN or Inf samples")
                if resampler is not None:
                    data = resampler.resample_chunk(data, last=last)
                if data.shape[0]:
                    yield data.T
                if last:
                    return

    return blocks


def _audio_info(path: Path):
    import soundfile as sf

    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"{path}: cannot decode audio ({exc}); re-export it as WAV or FLAC") from None


def _input_files(inputs: Iterable[str]) -> list[Path]:
    from karaoke.audio import is_audio_file

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and is_audio_file(p.name))
            if not found:
                raise AudioError(f"{item}: folder holds no audio files ({', '.join(('.wav', '.flac', '...'))})")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise AudioError(f"{item}: no such file or folder")
    return files


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
    channels = _audio_info(path).channels
    target = Path(out_dir) / path.stem
    target.mkdir(parents=True, exist_ok=True)
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
        raise
    for n in names:
        writers[n].close()
        os.replace(partial[n], target / f"{n}.wav")
    return target


def separate_files(
    inputs: Iterable[str],
    model_dir: str | Path,
    alpha: float,
    out_dir: str | Path,
    chunk_seconds: float = 30.0,
    progress: bool = False,
    precision: str = "float32",
) -> Iterator[Path]:
    """`karaoke separate`: every file (folders are searched for audio) with a DNN checkpoint (or the
    last one of a training run directory); runs on the GPU when there is one. Yields each output
    folder; the model's config is saved in `out_dir`."""
    from tqdm import tqdm

    from karaoke.errors import ConfigError
    from karaoke.masks import check_alpha
    from karaoke.models.dnn import load_dnn, pick_device

    try:
        alpha = check_alpha(alpha)
    except ValueError as exc:
        raise ConfigError(f"--alpha: {exc}") from None
    files = _input_files(inputs)
    # a training run directory stands for its last epoch's checkpoint
    epochs = sorted(Path(model_dir).glob("epoch_*/checkpoint.json"))
    if epochs and not (Path(model_dir) / "checkpoint.json").exists():
        model_dir = epochs[-1].parent
    model, config, _ = load_dnn(model_dir, device=pick_device())
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    save_config(config, Path(out_dir) / "config.yaml")
    for path in files:
        info = _audio_info(path)
        seconds = info.frames / info.samplerate
        with tqdm(total=round(seconds, 1), unit="s", desc=path.name, disable=not progress) as bar:
            yield separate_file(
                path, model, config, alpha, out_dir, chunk_seconds,
                on_block=lambda n: bar.update(round(n / config.corpus.sample_rate, 1)), precision=precision,
            )
