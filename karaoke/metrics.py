"""BSS-EVAL scores (SDR/SIR/SAR) of separated vocals and accompaniment, with mir_eval as reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCES = ("vocals", "accompaniment")


@dataclass(frozen=True)
class Scores:
    """Whole-song BSS-EVAL scores in dB, each of shape (2,): [vocals, accompaniment]."""

    sdr: np.ndarray
    sir: np.ndarray
    sar: np.ndarray

    def as_dict(self) -> dict[str, float]:
        return {
            f"{source}_{name}": float(getattr(self, name)[i])
            for name in ("sdr", "sir", "sar")
            for i, source in enumerate(SOURCES)
        }


def bss_eval_mir_eval(references: np.ndarray, estimates: np.ndarray) -> Scores:
    """mir_eval's `bss_eval_sources` (whole signal, 512-tap distortion filter, no permutation).

    references, estimates: (2, n_samples) rows [vocals, accompaniment].
    """
    import warnings

    import mir_eval

    with warnings.catch_warnings():
        # Deprecated in mir_eval 0.8 in favour of museval's variant, but it is the paper's metric.
        warnings.simplefilter("ignore", FutureWarning)
        sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(references, estimates, compute_permutation=False)
    return Scores(sdr, sir, sar)
