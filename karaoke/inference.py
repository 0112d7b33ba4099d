"""The network applied to a whole song: hop-1 windows, Eq. 1 averaging, in bounded memory.

Paper Eq. 1: the network predicts a T-frame mask window at every frame (hop 1), so bin (f, t)
receives up to T predictions; their mean p(f, t) is the soft mask. Windows are cut with `unfold`
and their predictions summed back with `fold`, `batch_windows` windows per network call, so no
Python loop runs over frames.

`WindowAverage` takes frames in blocks of any size and returns each frame's p as soon as every
window covering it has been predicted; it keeps only the last T - 1 frames between blocks, so a song
of any length needs the memory of one block. Blocks of any size give the same p as one block (the
windows and sums are the same, only grouped differently). `StreamingSoftMask` is it with the
network as the predictor; the NMF baseline uses it too (`karaoke.models.nmf.nmf_probability_stream`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

DEFAULT_BATCH_WINDOWS = 256
Precision = Literal["float32", "bfloat16"]


Predict = Callable[[torch.Tensor, int], torch.Tensor]


class WindowAverage:
    """Eq. 1 over a stream of frames for any window predictor.

    predict(windows, first): predictions (b, n_bins, T) of windows (b, n_bins, T), the hop-1 windows
    numbered first .. first + b - 1 from the start of the song (the NMF seeds each window by its
    number); called with at most `batch_windows` windows at a time.
    """

    def __init__(self, predict: Predict, window_frames: int, batch_windows: int, device: torch.device) -> None:
        self.predict = predict
        self.window_frames = window_frames
        self.batch_windows = batch_windows
        self.device = device
        self._frames: torch.Tensor | None = None  # (n_bins, n) frames not yet emitted
        self._sums: torch.Tensor | None = None  # (n_bins, n) sum of predictions for those frames
        self._counts: torch.Tensor | None = None  # (n,) number of predictions summed
        self._covered = 0  # windows start at buffered frames [0, _covered) have been predicted
        self._emitted = 0  # frames emitted so far: the number of buffered frame 0
        self.n_frames = 0

    def push(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Add frames (n_bins, k); returns p (n_bins, m) of the next m finished frames."""
        block = torch.as_tensor(frames).to(self.device, torch.float32)
        self.n_frames += block.shape[-1]
        if self._frames is None:
            self._frames = block
            self._sums = torch.zeros_like(block)
            self._counts = torch.zeros(block.shape[-1], device=self.device)
        else:
            self._frames = torch.cat([self._frames, block], dim=-1)
            self._sums = torch.cat([self._sums, torch.zeros_like(block)], dim=-1)
            self._counts = torch.cat([self._counts, torch.zeros(block.shape[-1], device=self.device)])
        self._predict(self._frames.shape[-1] - self.window_frames + 1)
        # A frame is finished once the window starting at it is predicted (later windows miss it).
        return self._emit(self._covered)

    def finish(self) -> torch.Tensor:
        """p of the remaining frames. A song shorter than one window is zero-padded to one (Eq. 1
        then averages the single prediction) and cropped back."""
        if self._frames is None:
            return torch.zeros(0, 0)
        n = self._frames.shape[-1]
        if self.n_frames < self.window_frames:
            missing = self.window_frames - n
            self._frames = F.pad(self._frames, (0, missing))
            self._sums = F.pad(self._sums, (0, missing))
            self._counts = F.pad(self._counts, (0, missing))
            self._predict(1)
        return self._emit(n)

    @torch.no_grad()
    def _predict(self, n_windows: int) -> None:
        """Predict windows starting at buffered frames [_covered, n_windows) and fold them into the sums."""
        if n_windows <= self._covered:
            return
        T = self.window_frames
        n_bins = self._frames.shape[0]
        # (n_bins, n) -> hop-1 windows (n_windows, n_bins, T), a view
        windows = self._frames.unfold(-1, T, 1).permute(1, 0, 2)
        for start in range(self._covered, n_windows, self.batch_windows):
            stop = min(start + self.batch_windows, n_windows)
            b = stop - start
            pred = self.predict(windows[start:stop], self._emitted + start)
            # fold: (b, n_bins, T) predictions of windows start..stop-1 summed onto frames start..stop+T-2;
            # bins as fold's channels with the windows contiguous is twice as fast as a (n_bins, T) kernel
            columns = pred.permute(1, 2, 0).reshape(1, n_bins * T, b)
            span = b + T - 1
            self._sums[:, start : start + span] += F.fold(columns, (1, span), (1, T)).reshape(n_bins, span)
            ones = torch.ones(1, T, b, device=self.device)
            self._counts[start : start + span] += F.fold(ones, (1, span), (1, T))[0, 0, 0]
        self._covered = max(self._covered, n_windows)

    def _emit(self, n: int) -> torch.Tensor:
        if n <= 0:
            return self._sums[:, :0].clone()
        probability = self._sums[:, :n] / self._counts[:n].clamp(min=1)
        self._frames, self._sums, self._counts = self._frames[:, n:], self._sums[:, n:], self._counts[n:]
        self._covered -= n
        self._emitted += n
        return probability


class StreamingSoftMask:
    """Eq. 1 of the mask DNN over a stream of mixture-magnitude frames (`WindowAverage`).

    model: maps windows (batch, n_bins, T) to probabilities of the same shape.
    scale: the song's unit scale (max mixture magnitude); inputs are divided by it (the network was
    trained on unit-scale magnitudes), so it must be known before the first block.
    precision: "bfloat16" runs the network under bfloat16 autocast (about twice as fast on CPUs with
    AVX512-BF16, p within ~1e-2); on a GPU it is always used.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        window_frames: int,
        scale: float,
        batch_windows: int = DEFAULT_BATCH_WINDOWS,
        precision: Precision = "float32",
    ) -> None:
        self.model = model
        self.scale = float(scale)
        device = next(model.parameters()).device
        self.autocast = device.type == "cuda"
        self.input_dtype = torch.float32
        if precision == "bfloat16" and not self.autocast:
            # A bfloat16 copy of the weights: CPU autocast would convert them again at every call.
            self.model = copy.deepcopy(model).to(torch.bfloat16)
            self.input_dtype = torch.bfloat16
        self._average = WindowAverage(self._predict, window_frames, batch_windows, device)

    def _predict(self, windows: torch.Tensor, first: int) -> torch.Tensor:
        with torch.autocast(windows.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(windows.contiguous().to(self.input_dtype)).float()

    def push(self, magnitude: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Add frames (n_bins, k) of |mixture STFT|; returns p (n_bins, m) of the next m finished frames."""
        return self._average.push(torch.as_tensor(magnitude).to(self._average.device, torch.float32) / self.scale)

    def finish(self) -> torch.Tensor:
        """p of the remaining frames (see `WindowAverage.finish`)."""
        return self._average.finish()


def soft_mask(
    model: torch.nn.Module,
    magnitude: np.ndarray | torch.Tensor,
    window_frames: int,
    scale: float | None = None,
    batch_windows: int = DEFAULT_BATCH_WINDOWS,
) -> np.ndarray:
    """Eq. 1 for a whole (n_bins, n_frames) mixture magnitude: p (n_bins, n_frames) float32.

    `scale` defaults to the magnitude's own maximum (pass 1.0 for an already normalised magnitude,
    e.g. `karaoke.features.song_features(...).mixture`). Threshold p with `karaoke.masks.alpha_masks`
    at as many alphas as needed without running the network again.
    """
    magnitude = torch.as_tensor(magnitude)
    if scale is None:
        peak = float(magnitude.max()) if magnitude.numel() else 0.0
        scale = peak if peak > 1e-12 else 1.0
    stream = StreamingSoftMask(model, window_frames, scale, batch_windows)
    parts = [stream.push(magnitude), stream.finish()]
    return torch.cat(parts, dim=-1).cpu().numpy()

