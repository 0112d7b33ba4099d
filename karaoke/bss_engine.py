"""A fast, exact BSS-EVAL engine (`bss_eval_sources` without permutation) for scoring many estimates
against the same references.

BSS-EVAL (Vincent et al. 2006, Sec. III.B) decomposes an estimate e of source j as
e = s_target + e_interf + e_artif, where s_target = P_j e is the projection of e on the 512 delayed
copies of reference j, and P_all e (on the delayed copies of every reference) = s_target + e_interf.
Projections are orthogonal and P_j P_all = P_j, so every energy follows from two quadratic forms:

    ||P e||^2 = d^T G^-1 d,   G = Gram matrix of the delayed references, d = <delayed refs, e>
    SDR = 10 log10(||P_j e||^2 / (||e||^2 - ||P_j e||^2))
    SIR = 10 log10(||P_j e||^2 / (||P_all e||^2 - ||P_j e||^2))
    SAR = 10 log10(||P_all e||^2 / (||e||^2 - ||P_all e||^2))

which are mir_eval's `_bss_decomp_mtifilt` + `_bss_source_crit` energies without building the
filtered signals. `References` does the reference-only work once: the block spectra of the
references, the Gram matrices (built from those spectra) and their Cholesky factors. Scoring one
estimate is then one pass of block FFTs (the correlation at the 512 lags, summed over blocks in the
frequency domain) and two small triangular solves.

Undefined scores are NaN, never an exception: every score when any reference is silent (all zeros:
the decomposition has no meaning; mir_eval raises), and the scores of a silent estimate.
An energy difference in the closed form is resolved only to ~1e-16 of the estimate's energy, so a
ratio above `EXPLICIT_ABOVE_DB` (rare: an IBM estimate with almost no artefacts, the unprocessed
mixture, which lies in the span of the references) is recomputed from the filtered signals, as
mir_eval does; above ~150 dB both are rounding noise.
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


class References:
    """The reference-only work of BSS-EVAL for `references` (n_src, n_samples).

    `score(estimates)` then scores any number of estimates of the same length, matched to the
    references in order (estimate j against reference j), exactly as
    `mir_eval.separation.bss_eval_sources(references, estimates, compute_permutation=False)`.
    """

    def __init__(self, references: np.ndarray, filter_length: int = FILTER_LENGTH, fft_size: int = FFT_SIZE):
        import scipy.linalg

        references = np.asarray(references, dtype=np.float64)
        if references.ndim != 2 or references.shape[1] == 0:
            raise ValueError(f"references must be (n_src, n_samples) with n_samples > 0, got {references.shape}")
        self.n_src, self.n_samples = references.shape
        self.filter_length = flen = filter_length
        # Short signals need no more than one block.
        self.fft_size = min(fft_size, 1 << int(np.ceil(np.log2(self.n_samples + flen - 1))))
        self.block = self.fft_size - flen + 1
        self.n_blocks = -(-self.n_samples // self.block)
        self.silent = bool(np.any(np.all(references == 0, axis=1)))
        self._references = references

        # Step 1. Spectra of the reference segments each estimate block meets: block b of the
        # estimate (samples bB .. bB+B-1) correlates with reference samples bB-(L-1) .. bB+B-1.
        padded = np.zeros((self.n_src, flen - 1 + self.n_blocks * self.block))
        padded[:, flen - 1 : flen - 1 + self.n_samples] = references
        segments = np.lib.stride_tricks.sliding_window_view(padded, self.fft_size, axis=1)[:, :: self.block]
        self._spectra = self._rfft(segments[:, : self.n_blocks])
        if self.silent:
            return

        # Step 2. Gram matrix of the delayed references (block Toeplitz), from the same correlations
        # the estimates get: G_ij[a, b] = <s_i delayed a, s_j delayed b>.
        lags = np.stack([self.correlations(ref) for ref in references])  # [j, i, tau] = <s_i delayed tau, s_j>
        gram = np.empty((self.n_src * flen, self.n_src * flen))
        for i in range(self.n_src):
            for j in range(self.n_src):
                gram[i * flen : (i + 1) * flen, j * flen : (j + 1) * flen] = scipy.linalg.toeplitz(
                    lags[j, i], lags[i, j]
                )

        # Step 3. Factorise G (every reference) and its diagonal blocks G_jj (reference j alone).
        with _one_blas_thread():
            self._all = _Solver(gram)
            self._own = [_Solver(gram[j * flen : (j + 1) * flen, j * flen : (j + 1) * flen]) for j in range(self.n_src)]

    def _rfft(self, blocks: np.ndarray) -> np.ndarray:
        import scipy.fft

        return scipy.fft.rfft(blocks, n=self.fft_size, axis=-1)

    def correlations(self, estimate: np.ndarray) -> np.ndarray:
        """<reference i delayed by tau, estimate> for tau in 0..L-1: (n_src, L) from (n_samples,)."""
        import scipy.fft

        blocks = np.zeros((self.n_blocks * self.block,))
        blocks[: self.n_samples] = estimate
        spectra = self._rfft(blocks.reshape(self.n_blocks, self.block))
        # Correlation is linear, so the blocks' cross-spectra are summed before one small inverse FFT.
        conj = spectra.conj()
        cross = np.stack([np.einsum("bf,bf->f", reference, conj) for reference in self._spectra])
        lags = scipy.fft.irfft(cross, n=self.fft_size, axis=-1)[:, : self.filter_length]
        # Lag k of the block correlation is delay L-1-k.
        return lags[:, ::-1]

    def energies(self, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """||e||^2, ||P_j e||^2 and ||P_all e||^2 of estimates (..., n_src, n_samples), each (..., n_src)."""
        estimates = np.asarray(estimates)
        if estimates.shape[-2:] != (self.n_src, self.n_samples):
            raise ValueError(
                f"estimates {estimates.shape} do not match the references ({self.n_src}, {self.n_samples})"
            )
        lead = estimates.shape[:-2]
        flat = estimates.reshape(-1, self.n_src, self.n_samples)
        # One estimate at a time in float64: a whole sweep of long songs is gigabytes at once.
        total = np.empty(flat.shape[:2])
        d = np.empty((*flat.shape[:2], self.n_src * self.filter_length))  # [e, j]: <delayed refs, estimate>
        for e, j in np.ndindex(*flat.shape[:2]):
            x = flat[e, j].astype(np.float64)
            total[e, j] = np.einsum("n,n->", x, x)
            if not self.silent:
                d[e, j] = self.correlations(x).reshape(-1)
        if self.silent:
            nan = np.full(total.shape, np.nan)
            return total.reshape(*lead, self.n_src), nan.reshape(*lead, self.n_src), nan.reshape(*lead, self.n_src)
        flen = self.filter_length
        own = np.empty(total.shape)
        every = np.empty(total.shape)
        with _one_blas_thread():
            for j in range(self.n_src):
                d_all = d[:, j].T  # (n_src * L, n_est): one solve with many right-hand sides
                every[:, j] = np.einsum("ke,ke->e", d_all, self._all.solve(d_all))
                d_own = d_all[j * flen : (j + 1) * flen]
                own[:, j] = np.einsum("ke,ke->e", d_own, self._own[j].solve(d_own))
        return (total.reshape(*lead, self.n_src), own.reshape(*lead, self.n_src), every.reshape(*lead, self.n_src))

    def score(self, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SDR, SIR, SAR in dB of estimates (..., n_src, n_samples), each (..., n_src).

        NaN where undefined: any reference silent, or the estimate silent.
        """
        estimates = np.asarray(estimates)
        total, own, every = self.energies(estimates)
        with np.errstate(divide="ignore", invalid="ignore"):
            sdr = _db(own, total - own)
            sir = _db(own, every - own)
            sar = _db(every, total - every)
        silent = total == 0
        for values in (sdr, sir, sar):
            values[silent] = np.nan
        # Rare estimates with a very small distortion, interference or artefact: filter explicitly.
        cancelled = ~silent & ~(np.maximum(np.maximum(sdr, sir), sar) <= EXPLICIT_ABOVE_DB)
        if not self.silent:
            for index in zip(*np.nonzero(cancelled)):
                sdr[index], sir[index], sar[index] = self._explicit(estimates[index].astype(np.float64), index[-1])
        return sdr, sir, sar

    def sdr(self, estimates: np.ndarray) -> np.ndarray:
        """SDR alone (..., n_src), e.g. of the unprocessed mixture, whose SAR would need the explicit path."""
        estimates = np.asarray(estimates)
        total, own, _ = self.energies(estimates)
        with np.errstate(divide="ignore", invalid="ignore"):
            sdr = _db(own, total - own)
        sdr[total == 0] = np.nan
        if not self.silent:
            for index in zip(*np.nonzero(~(total == 0) & ~(sdr <= EXPLICIT_ABOVE_DB))):
                sdr[index] = self._explicit(estimates[index].astype(np.float64), index[-1])[0]
        return sdr

    def _explicit(self, estimate: np.ndarray, j: int) -> tuple[float, float, float]:
        """mir_eval's `_bss_source_crit` from the filtered references of one estimate (n_samples,)."""
        from scipy.signal import oaconvolve

        flen = self.filter_length
        d = self.correlations(estimate).reshape(-1)
        with _one_blas_thread():
            filters = self._all.solve(d).reshape(self.n_src, flen)
            own_filter = self._own[j].solve(d[j * flen : (j + 1) * flen])
        projected = sum(oaconvolve(ref, f) for ref, f in zip(self._references, filters))
        target = oaconvolve(self._references[j], own_filter)
        padded = np.concatenate([estimate, np.zeros(flen - 1)])
        with np.errstate(divide="ignore"):
            return (
                float(_db(np.sum(target**2), np.sum((padded - target) ** 2))),
                float(_db(np.sum(target**2), np.sum((projected - target) ** 2))),
                float(_db(np.sum(projected**2), np.sum((padded - projected) ** 2))),
            )


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10 log10(num / den); +inf for den == 0, as mir_eval's `_safe_db` (NaN for den < 0: cancelled)."""
    return np.where(den == 0, np.inf, 10 * np.log10(num / den))


def bss_eval(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-shot SDR, SIR, SAR (each (n_src,)) of estimates (n_src, n_samples) against references."""
    return References(references).score(estimates)


class FramewiseReferences:
    """BSS-EVAL per window (mir_eval's `bss_eval_sources_framewise` windows): `window` samples every
    `hop`, only whole windows; a window where any reference or estimate is silent scores NaN, as in
    mir_eval. A signal with fewer than two windows is scored whole, as mir_eval does.
    """

    def __init__(self, references: np.ndarray, window: int, hop: int, filter_length: int = FILTER_LENGTH):
        references = np.asarray(references, dtype=np.float64)
        self.n_src, self.n_samples = references.shape
        n_windows = (self.n_samples - window + hop) // hop
        if n_windows < 2:
            self.starts, self.window = [0], self.n_samples
        else:
            self.starts, self.window = [k * hop for k in range(n_windows)], window
        self._windows = [References(references[:, s : s + self.window], filter_length) for s in self.starts]

    def score(self, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """SDR, SIR, SAR of estimates (..., n_src, n_samples), each (..., n_src, n_windows)."""
        estimates = np.asarray(estimates, dtype=np.float64)
        per_window = []
        for start, refs in zip(self.starts, self._windows):
            part = estimates[..., start : start + self.window]
            scores = np.stack(refs.score(part))
            # mir_eval drops the whole window (every source) when any estimate in it is silent.
            silent = np.any(np.all(part == 0, axis=-1), axis=-1)
            scores[:, silent] = np.nan
            per_window.append(scores)
        sdr, sir, sar = np.stack(per_window, axis=-1)
        return sdr, sir, sar
