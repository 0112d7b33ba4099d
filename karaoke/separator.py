"""`karaoke.Separator`: a trained mask DNN that splits songs into vocals and accompaniment.

    from karaoke import Separator
    separator = Separator.from_pretrained("mir1k")          # a name, a model folder or a URL
    result = separator.separate(audio, sample_rate)          # (n,), (channels, n) or (n, channels)
    result.vocals, result.accompaniment                      # the input's rate, layout and length
    result.probability                                       # Eq. 1's soft mask p (n_bins, n_frames)

Layout rule of a 2-D array: the axis of at most `MAX_CHANNELS` (8) entries is the channels when
the other axis is longer, so (2, n) is channels-first and soundfile's (n, 2) is channels-last;
any other shape (e.g. (4, 4)) is refused. Mono (n,) stays 1-D.

The mask mode and alpha default to the model's (`evaluation.mask`, `evaluation.alpha` of its
card); alpha has an effect only with binary masks (Eq. 2), so giving it with soft masks is an error.
`karaoke separate` is this class applied to each input file (`separate_file`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from karaoke.errors import AudioError, ConfigError
from karaoke.masks import MaskMode, check_alpha

if TYPE_CHECKING:
    import torch

    from karaoke.config import ExperimentConfig
    from karaoke.separate import Separation

MAX_CHANNELS = 8


def channels_first(audio: np.ndarray) -> tuple[np.ndarray, bool]:
    """(audio as (n_channels, n_samples) float32, whether it was given channels-last); 1-D audio is
    one channel. `AudioError` for a shape the layout rule (module docstring) does not decide."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio[None], False
    if audio.ndim == 2:
        rows, columns = audio.shape
        if rows <= MAX_CHANNELS and columns > rows:
            return audio, False
        if columns <= MAX_CHANNELS and rows > columns:
            return np.ascontiguousarray(audio.T), True
    raise AudioError(
        f"audio of shape {audio.shape}: give (n_samples,), (n_channels, n_samples) or (n_samples, n_channels) "
        f"with at most {MAX_CHANNELS} channels and more samples than channels"
    )


class Separator:
    """A mask DNN with its config, mask mode and alpha, ready to separate arrays and files."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: ExperimentConfig,
        name: str = "model",
        mask: MaskMode | None = None,
        alpha: float | None = None,
        precision: str = "float32",
        chunk_seconds: float = 30.0,
    ) -> None:
        self.model, self.config, self.name = model, config, name
        self.mask: MaskMode = mask or config.evaluation.mask
        if self.mask not in ("binary", "soft"):
            raise ConfigError(f"--mask {self.mask}: choose binary or soft")
        if alpha is not None and self.mask == "soft":
            raise ConfigError(
                "--alpha has no effect with soft masks (p and 1 - p are applied as they are); "
                "leave it out, or add --mask binary"
            )
        try:
            self.alpha = check_alpha(config.evaluation.alpha if alpha is None else alpha)
        except ValueError as exc:
            raise ConfigError(f"--alpha: {exc}") from None
        self.precision, self.chunk_seconds = precision, chunk_seconds

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path | None = None,
        device: str | None = None,
        mask: MaskMode | None = None,
        alpha: float | None = None,
        precision: str = "float32",
        chunk_seconds: float = 30.0,
    ) -> Separator:
        """The model named (shipped or cached), a checkpoint or exported folder, a training run
        folder, or a URL (downloaded once; see `karaoke.model_store.locate_model`); default: the
        shipped default model. `device` "cpu" or "cuda" (default: the GPU when there is one)."""
        from karaoke.model_store import locate_model, model_name
        from karaoke.models.dnn import load_dnn, pick_device

        torch_device = pick_device(device)
        folder = locate_model(name_or_path)
        model, config, _ = load_dnn(folder, device=torch_device)
        return cls(model, config, model_name(folder), mask, alpha, precision, chunk_seconds)

    @property
    def sample_rate(self) -> int:
        """The rate the network works at; inputs at any rate are accepted."""
        return self.config.corpus.sample_rate

    def separate(self, audio: np.ndarray, sample_rate: int) -> Separation:
        """Vocals and accompaniment of `audio` at `sample_rate`, in the input's layout and length
        (see the module docstring), with the soft mask p (n_bins, n_frames) of Eq. 1 on the model's
        STFT grid (`config.stft` at `sample_rate` of the model)."""
        from karaoke.separate import Separation, separate_audio

        signal, transposed = channels_first(audio)
        if not np.all(np.isfinite(signal)):
            raise AudioError("audio contains NaN or Inf samples")
        chunk = max(int(self.chunk_seconds * sample_rate), 1)
        result = separate_audio(
            self.model, signal, self.config, self.alpha, sample_rate=int(sample_rate), mask=self.mask,
            chunk_samples=chunk, precision=self.precision,
        )
        vocals, accompaniment = result.vocals, result.accompaniment
        if np.ndim(audio) == 1:
            vocals, accompaniment = vocals[0], accompaniment[0]
        elif transposed:
            vocals, accompaniment = vocals.T, accompaniment.T
        return Separation(vocals, accompaniment, result.probability, result.sample_rate)

    def separate_file(
        self,
        path: str | Path,
        target: str | Path,
        audio_format: str = "wav",
        bit_depth: str | None = None,
        on_block: Callable[[int], None] | None = None,
    ) -> str | Path:
        """Separate an audio file (a local path or URL) into the folder `target` (a local path or
        URL): vocals.<ext>, accompaniment.<ext> at the file's rate, channels and length (see
        `karaoke.separate.separate_file`). For a URL they are written to a temporary folder, then
        uploaded all or none (`karaoke.storage.upload_all_or_nothing`). Returns `target`."""
        import tempfile

        from karaoke.separate import separate_file
        from karaoke.storage import is_url, upload_all_or_nothing

        def separate_into(folder: Path) -> Path:
            return separate_file(
                path, folder, self.model, self.config, self.mask, self.alpha, audio_format, bit_depth,
                self.chunk_seconds, on_block, self.precision,
            )

        if not is_url(target):
            return separate_into(Path(target))
        with tempfile.TemporaryDirectory(prefix="karaoke-") as folder:
            separate_into(Path(folder))
            upload_all_or_nothing(folder, target)
        return target
