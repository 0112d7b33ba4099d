"""Full-band output: the network's mask, estimated at the model's rate, applied to the STFT of the
input at the input's own rate, so the result keeps the input's sample rate and every band of it.

The input-rate STFT (`input_stft`) spans the same time as the model's: its window and hop are the
model's scaled by the rate ratio (rounded to whole samples), so a frame covers the same 64 ms at
44.1 kHz as at 16 kHz. Its bins and frames do not fall exactly on the model's, so the soft mask p of
Eq. 1 (n_bins, n_frames) is interpolated linearly in time and in frequency onto them; binary masks
(Eq. 2) threshold the interpolated p. At equal rates the grids coincide and p is used unchanged.

Bins above the model's band (above its Nyquist frequency, e.g. 8 kHz for a 16 kHz model) carry
nothing the network heard, and get `HIGH_BAND`:
- "top_octave" (default): the mean of p over the model's top octave (4-8 kHz at 16 kHz) in that
  frame. Sibilants, breath and cymbals spread over that octave and above it, so the octave's
  verdict on a frame carries upwards; a single bin would not do: the resampler's transition band
  leaves the model's top bins (above about 7.8 kHz at 16 kHz) almost empty, so their p is the
  network's guess from the neighbouring bins rather than a measurement;
- "top_bin": p of the model's highest bin in that frame;
- "taper": "top_octave" fading to 0 along a raised cosine over the octave above the band (8-16
  kHz), all accompaniment beyond it;
- "accompaniment": every such bin in the accompaniment.
`benchmarks/fullband.py` scores each rule on the MUSDB excerpt (docs/benchmarks.md): over the whole
signal they differ by at most 0.02 dB, "top_octave" first or tied; the band above 8 kHz alone cannot
rank them (that excerpt's mixture holds less energy there than the sum of its stems), so the default
rests on the reason given for it, not on the score.
"""

from __future__ import annotations

from typing import Literal

import torch

from karaoke.config import StftConfig

HighBand = Literal["top_octave", "top_bin", "taper", "accompaniment"]
HIGH_BAND: HighBand = "top_octave"


def input_stft(model_stft: StftConfig, model_rate: int, input_rate: int) -> StftConfig:
    """The STFT of the input's rate spanning the model's window and hop in time: n_fft and hop
    scaled by input_rate / model_rate, rounded (n_fft to an even number)."""
    if input_rate == model_rate:
        return model_stft
    ratio = input_rate / model_rate
    hop = max(round(model_stft.hop_length * ratio), 1)
    n_fft = max(2 * round(model_stft.n_fft * ratio / 2), 16, hop)
    return StftConfig(n_fft=n_fft, hop_length=hop)


class MaskGrid:
    """Maps p from the model's STFT grid onto the input's, frame by frame as p arrives.

    `push(p)` takes the model's next p frames (n_bins, k); `take(n_ready)` returns p for the
    input's next frames (input n_bins, m) that the model frames seen so far determine, m <= n_ready.
    After `finish()` every remaining input frame is determined (the last model frame is repeated).
    """

    def __init__(
        self,
        model_stft: StftConfig,
        model_rate: int,
        input_rate: int,
        device: torch.device,
        high_band: HighBand = HIGH_BAND,
    ) -> None:
        in_stft = input_stft(model_stft, model_rate, input_rate)
        # Input frame i is centred at i * hop_in / input_rate seconds, model frame t at
        # t * hop / model_rate: u_i = i * num / den in model frames, kept exact in integers.
        self.num, self.den = in_stft.hop_length * model_rate, input_rate * model_stft.hop_length
        # Input bin k is at k * input_rate / n_fft_in Hz, i.e. v_k = k * input_rate * n_fft / (n_fft_in * model_rate).
        k = torch.arange(in_stft.n_bins, device=device, dtype=torch.float64)
        v = k * input_rate * model_stft.n_fft / (in_stft.n_fft * model_rate)
        top = model_stft.n_bins - 1
        inside = v <= top + 1e-9
        self.inside = inside.to(torch.float32)[:, None]
        # Each input bin above the band takes `above` times the frame's high-band p (`_high`).
        octaves = torch.log2(v.clamp(min=top) / top)  # 0 at the model's Nyquist, 1 an octave above
        weight = {
            "top_octave": torch.ones_like(v), "top_bin": torch.ones_like(v), "accompaniment": torch.zeros_like(v),
            "taper": torch.where(octaves < 1, torch.cos(torch.pi / 2 * octaves) ** 2, torch.zeros_like(v)),
        }[high_band]
        self.above = (weight * ~inside).to(torch.float32)[:, None]
        self.octave = slice(top // 2, top + 1) if high_band in ("top_octave", "taper") else slice(top, top + 1)
        v = v.clamp(max=top)
        self.bin_lo = v.floor().long()
        self.bin_hi = (self.bin_lo + 1).clamp(max=top)
        self.bin_w = (v - self.bin_lo).to(torch.float32)[:, None]
        self._p: torch.Tensor | None = None  # model frames [_p_start, _p_start + _p.shape[-1])
        self._p_start = 0
        self._next = 0  # the next input frame to map
        self._done = False

    def push(self, probability: torch.Tensor) -> None:
        if probability.shape[-1]:
            self._p = probability if self._p is None else torch.cat([self._p, probability], -1)

    def finish(self) -> None:
        self._done = True

    def take(self, n_ready: int) -> torch.Tensor:
        """p (input n_bins, m) of input frames [next, next + m), m <= n_ready the ones determined."""
        seen = self._p_start + (0 if self._p is None else self._p.shape[-1])
        frames = torch.arange(self._next, self._next + n_ready, device=self.bin_lo.device)
        lo = frames * self.num // self.den
        weight = (frames * self.num % self.den).to(torch.float32) / self.den
        if self._done:
            m = n_ready if seen else 0
        else:
            # a frame between model frames t and t + 1 waits for t + 1
            m = int(((lo + (weight > 0)) < seen).sum())
        if m == 0:
            return torch.zeros(len(self.bin_lo), 0, device=self.bin_lo.device)
        lo, weight = lo[:m], weight[:m]
        hi = torch.where(weight > 0, lo + 1, lo).clamp(max=seen - 1) - self._p_start
        lo = lo.clamp(max=seen - 1) - self._p_start
        in_time = self._p[:, lo] * (1 - weight) + self._p[:, hi] * weight  # (model n_bins, m)
        below = in_time[self.bin_lo] * (1 - self.bin_w) + in_time[self.bin_hi] * self.bin_w
        mapped = below * self.inside + in_time[self.octave].mean(0) * self.above
        self._next += m
        # Model frames before the next input frame's left neighbour are never needed again.
        keep_from = min(self._next * self.num // self.den, seen - 1)
        drop = keep_from - self._p_start
        if drop > 0:
            self._p, self._p_start = self._p[:, drop:], keep_from
        return mapped
