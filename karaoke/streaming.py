"""Streaming STFT and overlap-add: audio of any length in blocks, with exact overlap handling, so the
result equals `karaoke.spectral.stft` / `istft` of the whole signal (to float rounding).

- `Framer` cuts centred STFT frames from a stream of samples (the reflect padding of
  `karaoke.spectral.stft` is rebuilt at both ends), carrying the last n_fft - hop samples over;
- `OverlapAdd` inverts masked frames by windowed overlap-add divided by the summed squared window
  (what `torch.istft` does), carrying n_fft - hop samples over.
"""

from __future__ import annotations

import numpy as np
import torch

from karaoke.config import StftConfig
from karaoke.errors import AudioError


class Framer:
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


class OverlapAdd:
    """Inverse of `Framer`: audio (n_channels, m) finished so far from blocks of complex frames."""

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


def downmix(spec: torch.Tensor) -> torch.Tensor:
    """STFT of the mono downmix (n_bins, k) from the channels' STFTs (n_channels, n_bins, k): the STFT
    is linear, so this is the mean (written as a sum: torch's complex mean is slow)."""
    return spec[0] if spec.shape[0] == 1 else spec.sum(0) / spec.shape[0]
