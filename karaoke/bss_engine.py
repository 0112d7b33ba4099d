"""A fast, exact BSS-EVAL engine (`bss_eval_sources` without permutation) that scores many estimates
against the same references, on signals given whole or in blocks of any size.

BSS-EVAL (Vincent et al. 2006, Sec. III.B) decomposes an estimate e of source j as
e = s_target + e_interf + e_artif, where s_target = P_j e is the projection of e on the 512 delayed
copies of reference j, and P_all e (on the delayed copies of every reference) = s_target + e_interf.
Projections are orthogonal and P_j P_all = P_j, so every energy follows from two quadratic forms:

    ||P e||^2 = d^T G^-1 d,   G = Gram matrix of the delayed references, d = <delayed refs, e>
    SDR = 10 log10(||P_j e||^2 / (||e||^2 - ||P_j e||^2))
    SIR = 10 log10(||P_j e||^2 / (||P_all e||^2 - ||P_j e||^2))
    SAR = 10 log10(||P_all e||^2 / (||e||^2 - ||P_all e||^2))

which are mir_eval's `_bss_decomp_mtifilt` + `_bss_source_crit` energies without building the
filtered signals. Everything in them is a sum over samples: ||e||^2, and the correlations at the
512 lags of each reference with each estimate (d) and with each reference (G, block Toeplitz).
`StreamingBss` accumulates those sums block by block: block FFTs whose cross-spectra are summed in
the frequency domain, one small inverse FFT at the end, and between blocks only the last L - 1
reference samples. Its memory is that of one block whatever the length of the signal, and a signal
scores the same pushed whole or in pieces (block boundaries fall every `FFT_SIZE - L + 1` samples
from the start whatever the pushed sizes; the sums only associate differently, to rounding).

Undefined scores are NaN, never an exception: every score when any reference is silent (all zeros:
the decomposition has no meaning; mir_eval raises), and the scores of a silent estimate.
An energy difference in the closed form is resolved only to ~1e-16 of the estimate's energy, so a
ratio above `EXPLICIT_ABOVE_DB` (rare: an IBM estimate with almost no artefacts, the unprocessed
mixture, which lies in the span of the references) is recomputed from the filtered signals, as
mir_eval does; above ~150 dB both are rounding noise. Those signals need the samples again:
`StreamingBss.explicit` returns a second pass (`ExplicitPass`) to feed the same blocks.
"""

from __future__ import annotations

import warnings

import numpy as np

FILTER_LENGTH = 512
# FFT size of the correlation blocks: each block holds FFT_SIZE - FILTER_LENGTH + 1 estimate samples.
FFT_SIZE = 8192
# Above this ratio an energy difference has lost more than 7 of its 16 digits to cancellation.
EXPLICIT_ABOVE_DB = 70.0


def _one_blas_thread():
    """The solves are small (n_src * 512): threads gain nothing, and on a busy machine OpenBLAS threads
    spinning against other processes made a 1024 x 1024 Cholesky take 1 s instead of 15 ms."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


class _Solver:
    """G^-1 for a symmetric positive (semi-)definite Gram matrix: Cholesky, or LU where rounding makes
    Cholesky fail on an ill-conditioned G (mir_eval's `np.linalg.solve` is LU throughout)."""

    def __init__(self, gram: np.ndarray):
        import scipy.linalg

        try:
            self._cho = scipy.linalg.cho_factor(gram, lower=True, check_finite=False)
            self._lu = None
        except np.linalg.LinAlgError:
            with warnings.catch_warnings():
                # An exactly singular G gives inf/NaN solutions, reported as NaN scores.
                warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
                self._lu = scipy.linalg.lu_factor(gram, check_finite=False)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        import scipy.linalg

        if self._lu is None:
            return scipy.linalg.cho_solve(self._cho, rhs, check_finite=False)
        return scipy.linalg.lu_solve(self._lu, rhs, check_finite=False)


class StreamingBss:
    """BSS-EVAL of estimates against `n_src` references that arrive in blocks.

    `push(references (n_src, m), estimates (..., n_src, m))` any number of times (the leading shape of
    the estimates fixed by the first push: e.g. one estimate pair per alpha), then `finish()` for
    SDR, SIR and SAR in dB, each (..., n_src): estimate j against reference j, exactly as
    `mir_eval.separation.bss_eval_sources(references, estimates, compute_permutation=False)`.
    """

    def __init__(self, n_src: int, filter_length: int = FILTER_LENGTH, fft_size: int = FFT_SIZE):
        if fft_size < filter_length:
            raise ValueError(f"fft_size {fft_size} is shorter than the filter ({filter_length})")
        self.n_src, self.filter_length, self.fft_size = n_src, filter_length, fft_size
        self.block = fft_size - filter_length + 1
        self.n_samples = 0
        self._history = np.zeros((n_src, filter_length - 1))  # reference samples before the pending ones
        self._references: list[np.ndarray] = []  # pushed samples not yet in a whole block
        self._estimates: list[np.ndarray] = []
        self._lead: tuple[int, ...] | None = None
        n_freq = fft_size // 2 + 1
        # Sums over blocks of R_i conj(X_j): [j, i] for the references as X, [e, j, i] for the estimates.
        self._reference_cross = np.zeros((n_src, n_src, n_freq), dtype=np.complex128)
        self._estimate_cross: np.ndarray | None = None
        self._reference_energy = np.zeros(n_src)
        self._energy: np.ndarray | None = None
        self._buffered = 0

    def push(self, references: np.ndarray, estimates: np.ndarray) -> None:
        references, estimates = np.asarray(references), np.asarray(estimates)
        m = references.shape[-1]
        if references.shape != (self.n_src, m) or estimates.shape[-2:] != (self.n_src, m):
            raise ValueError(
                f"estimates {estimates.shape} do not match the references {references.shape} ({self.n_src} sources)"
            )
        if self._lead is None:
            self._lead = estimates.shape[:-2]
            n_est = int(np.prod(self._lead, dtype=np.int64))
            self._estimate_cross = np.zeros((n_est, *self._reference_cross.shape), dtype=np.complex128)
            self._energy = np.zeros((n_est, self.n_src))
        elif estimates.shape[:-2] != self._lead:
            raise ValueError(f"estimates {estimates.shape} do not match the first block's {self._lead}")
        self.n_samples += m
        self._references.append(references)
        self._estimates.append(estimates.reshape(-1, self.n_src, m))
        self._buffered += m
        if self._buffered >= self.block:
            self._accumulate(final=False)

    def _accumulate(self, final: bool) -> None:
        """Fold the whole blocks among the buffered samples (all of them, zero-padded, when `final`)."""
        import scipy.fft

        references = np.concatenate(self._references, axis=-1).astype(np.float64)
        estimates = np.concatenate(self._estimates, axis=-1)
        n_blocks = -(-self._buffered // self.block) if final else self._buffered // self.block
        used = min(n_blocks * self.block, self._buffered)
        self._references = [references[:, used:]]
        self._estimates = [estimates[..., used:]]
        self._buffered -= used
        if n_blocks == 0:
            return
        span = n_blocks * self.block
        flen = self.filter_length
        # Block b of the samples (bB .. bB+B-1) correlates with reference samples bB-(L-1) .. bB+B-1.
        padded = np.zeros((self.n_src, flen - 1 + span))
        padded[:, : flen - 1] = self._history
        padded[:, flen - 1 : flen - 1 + used] = references[:, :used]
        self._history = padded[:, used : used + flen - 1].copy()
        segments = np.lib.stride_tricks.sliding_window_view(padded, self.fft_size, axis=1)[:, :: self.block]
        reference_spectra = scipy.fft.rfft(segments[:, :n_blocks], axis=-1)  # (n_src, n_blocks, n_freq)

        def add(signal: np.ndarray, into: np.ndarray) -> None:
            """into[i] += sum over blocks of R_i conj(X) for one signal (used samples,)."""
            blocks = np.zeros(span)
            blocks[:used] = signal
            conj = scipy.fft.rfft(blocks.reshape(n_blocks, self.block), n=self.fft_size, axis=-1).conj()
            for i in range(self.n_src):
                into[i] += np.einsum("bf,bf->f", reference_spectra[i], conj)

        for j in range(self.n_src):
            x = references[j, :used]
            self._reference_energy[j] += np.einsum("n,n->", x, x)
            add(x, self._reference_cross[j])
        # One estimate at a time in float64: a sweep of long blocks would be gigabytes at once.
        for e, j in np.ndindex(*estimates.shape[:2]):
            x = estimates[e, j, :used].astype(np.float64)
            self._energy[e, j] += np.einsum("n,n->", x, x)
            add(x, self._estimate_cross[e, j])

    def _lags(self, cross: np.ndarray) -> np.ndarray:
        """<reference i delayed by tau, signal> (..., n_src, L) for tau in 0..L-1 from summed cross-spectra."""
        import scipy.fft

        lags = scipy.fft.irfft(cross, n=self.fft_size, axis=-1)[..., : self.filter_length]
        # Lag k of the block correlation is delay L-1-k.
        return lags[..., ::-1]

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SDR, SIR, SAR in dB, each (..., n_src), from the closed form; NaN where undefined (any
        reference silent, or the estimate silent). `cancelled` then marks the estimates whose
        scores need the explicit pass (`explicit`)."""
        import scipy.linalg

        if self._lead is None or self.n_samples == 0:
            raise ValueError("no samples were pushed")
        if self._buffered:
            self._accumulate(final=True)
        flen, n_src = self.filter_length, self.n_src
        self.silent = bool(np.any(self._reference_energy == 0))
        total = self._energy
        if self.silent:
            nan = np.full(total.shape, np.nan)
            self.cancelled = np.zeros(self._lead + (n_src,), dtype=bool)
            return tuple(nan.reshape(self._lead + (n_src,)) for _ in range(3))
        # G_ij[a, b] = <s_i delayed a, s_j delayed b>, block Toeplitz from [j, i, tau] = <s_i delayed tau, s_j>.
        lags = self._lags(self._reference_cross)
        gram = np.empty((n_src * flen, n_src * flen))
        for i in range(n_src):
            for j in range(n_src):
                gram[i * flen : (i + 1) * flen, j * flen : (j + 1) * flen] = scipy.linalg.toeplitz(lags[j, i], lags[i, j])
        d = self._lags(self._estimate_cross).reshape(*total.shape, n_src * flen)  # [e, j]: <delayed refs, e_j>
        own, every = np.empty(total.shape), np.empty(total.shape)
        with _one_blas_thread():
            self._all = _Solver(gram)
            self._own = [_Solver(gram[j * flen : (j + 1) * flen, j * flen : (j + 1) * flen]) for j in range(n_src)]
            for j in range(n_src):
                d_all = d[:, j].T  # (n_src * L, n_est): one solve with many right-hand sides
                every[:, j] = np.einsum("ke,ke->e", d_all, self._all.solve(d_all))
                d_own = d_all[j * flen : (j + 1) * flen]
                own[:, j] = np.einsum("ke,ke->e", d_own, self._own[j].solve(d_own))
        self._d = d
        sdr, sir, sar = energy_scores(total, own, every)
        self.cancelled = (~(total == 0) & ~(np.maximum(np.maximum(sdr, sir), sar) <= EXPLICIT_ABOVE_DB)).reshape(
            self._lead + (n_src,)
        )
        return tuple(x.reshape(self._lead + (n_src,)) for x in (sdr, sir, sar))

    def explicit(self, indices: list[tuple[int, ...]]) -> ExplicitPass:
        """The explicit pass for estimates at `indices` (..., j) of `finish`'s arrays: push the same
        blocks into it again, then its `finish()` gives their SDR, SIR, SAR."""
        flat = [(int(np.ravel_multi_index(index[:-1], self._lead)) if self._lead else 0, int(index[-1])) for index in indices]
        flen = self.filter_length
        with _one_blas_thread():
            filters = {
                (e, j): (
                    self._all.solve(self._d[e, j]).reshape(self.n_src, flen),
                    self._own[j].solve(self._d[e, j, j * flen : (j + 1) * flen]),
                )
                for e, j in flat
            }
        return ExplicitPass(list(indices), flat, filters, self.n_src, flen)


class ExplicitPass:
    """mir_eval's `_bss_source_crit` from the filtered references of a few estimates, in blocks:
    target = conv(s_j, own filter), projection = sum_i conv(s_i, filter_i), each N + L - 1 long, and
    the estimate zero-padded to that length."""

    def __init__(self, indices: list, flat: list, filters: dict, n_src: int, filter_length: int):
        self.indices, self._flat, self._filters = indices, flat, filters
        self._history = np.zeros((n_src, filter_length - 1))
        # Per estimate: sums of target^2, (e - target)^2, (projection - target)^2, projection^2, (e - projection)^2.
        self._sums = {key: np.zeros(5) for key in flat}

    def push(self, references: np.ndarray, estimates: np.ndarray) -> None:
        """The blocks given to `StreamingBss.push`, in the same order."""
        estimates = np.asarray(estimates)
        flat = estimates.reshape(-1, *estimates.shape[-2:])
        self._add(np.asarray(references, dtype=np.float64), lambda e, j: flat[e, j].astype(np.float64))

    def _add(self, references: np.ndarray, estimate) -> None:
        from scipy.signal import oaconvolve

        m = references.shape[-1]
        if m == 0:
            return
        segment = np.concatenate([self._history, references], axis=-1)
        self._history = segment[:, m:]
        for e, j in self._flat:
            filters, own_filter = self._filters[(e, j)]
            x = estimate(e, j)
            projected = sum(oaconvolve(s, f, mode="valid") for s, f in zip(segment, filters))
            target = oaconvolve(segment[j], own_filter, mode="valid")
            self._sums[(e, j)] += [
                np.sum(target**2), np.sum((x - target) ** 2), np.sum((projected - target) ** 2),
                np.sum(projected**2), np.sum((x - projected) ** 2),
            ]

    def finish(self) -> list[tuple[float, float, float]]:
        """(SDR, SIR, SAR) in dB per index, in the order given to `StreamingBss.explicit`."""
        # The last L - 1 samples of the filtered signals, where the references and the estimate are zero.
        tail = self._history.shape[1]
        self._add(np.zeros_like(self._history), lambda e, j: np.zeros(tail))
        out = []
        with np.errstate(divide="ignore"):
            for key in self._flat:
                target, distortion, interference, projected, artefacts = self._sums[key]
                out.append((float(_db(target, distortion)), float(_db(target, interference)), float(_db(projected, artefacts))))
        return out


def energy_scores(total: np.ndarray, own: np.ndarray, every: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SDR, SIR, SAR from ||e||^2, ||P_j e||^2, ||P_all e||^2 (any equal shapes); NaN for a silent estimate."""
    with np.errstate(divide="ignore", invalid="ignore"):
        sdr = _db(own, total - own)
        sir = _db(own, every - own)
        sar = _db(every, total - every)
    for values in (sdr, sir, sar):
        values[total == 0] = np.nan
    return sdr, sir, sar


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10 log10(num / den); +inf for den == 0, as mir_eval's `_safe_db` (NaN for den < 0: cancelled)."""
    return np.where(den == 0, np.inf, 10 * np.log10(num / den))


def bss_eval(
    references: np.ndarray, estimates: np.ndarray, filter_length: int = FILTER_LENGTH, sdr_only: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SDR, SIR, SAR, each (..., n_src), of estimates (..., n_src, n_samples) against references
    (n_src, n_samples), held whole. With `sdr_only` the explicit path is taken for the SDR alone
    (e.g. for the unprocessed mixture, whose SAR needs it and is rounding noise anyway)."""
    references = np.asarray(references)
    n_src, n_samples = references.shape
    if n_samples == 0:
        raise ValueError(f"references must be (n_src, n_samples) with n_samples > 0, got {references.shape}")
    # Short signals need no more than one block.
    fft_size = min(FFT_SIZE, 1 << int(np.ceil(np.log2(n_samples + filter_length - 1))))
    stream = StreamingBss(n_src, filter_length, fft_size)
    stream.push(references, estimates)
    sdr, sir, sar = stream.finish()
    redo = stream.cancelled & ~(sdr <= EXPLICIT_ABOVE_DB) if sdr_only else stream.cancelled
    indices = [tuple(int(i) for i in index) for index in zip(*np.nonzero(redo))]
    if indices:
        explicit = stream.explicit(indices)
        explicit.push(references, estimates)
        for index, values in zip(indices, explicit.finish()):
            sdr[index] = values[0]
            if not sdr_only:
                sir[index], sar[index] = values[1], values[2]
    return sdr, sir, sar
