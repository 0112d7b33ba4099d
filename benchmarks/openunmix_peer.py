"""A peer beside karaoke's DNN: Open-Unmix's network, trained by its own recipe on the same MIR-1K
training clips for the same CPU time, scored by the same code on the same validation clips.

    make peer      # pip install --no-deps openunmix==1.3.0: its torchaudio has no wheel for the pinned torch
    karaoke run --config configs/mir1k.yaml --out runs/mir1k          # karaoke's row, on 2 cores
    python benchmarks/openunmix_peer.py --threads 2 --karaoke runs/mir1k [--json peer.json]

The model is `openunmix.model.OpenUnmix` (3 bidirectional LSTM layers of 512 units between dense
layers with batch norm, no pretrained weights) for one channel and this config's STFT, so both
networks see the same spectrogram. Its recipe, as Open-Unmix's `train.py` sets it: each example a
random excerpt of one clip's voice over another clip's accompaniment (random track mix), each at a
random gain in [0.25, 1.25]; input standardised by the training mixtures' per-bin mean and standard
deviation; the squared error of the estimated vocal magnitude; Adam at lr 0.001, weight decay 1e-5;
batches of 16 excerpts. The excerpts are 4 s instead of its 6 s, the length of MIR-1K's shorter
clips. Training stops after the karaoke row's training seconds (`--seconds` to set them, or
`--cpu-seconds` for a budget of this process's CPU time), on `--threads` threads. Its learning-rate plateau schedule never acts within such a
budget (it waits 80 epochs), so the rate is constant.

Scored as karaoke's soft mask: p = min(|V_hat| / |X|, 1), the vocal magnitude the network
estimates over the mixture's, applied to the mixture STFT (`karaoke.masks`), BSS-EVAL by
`karaoke.metrics` at alpha 0.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mir1k_quality import format_row, load_songs, score_method, summary

from karaoke.config import ExperimentConfig, load_config
from karaoke.features import SongFeatures
from karaoke.mixing import MixedSong

EXCERPT_SECONDS, BATCH, GAIN_RANGE = 4.0, 16, (0.25, 1.25)


def openunmix_class():
    """`openunmix.model.OpenUnmix`. Its package imports torchaudio at the top of modules whose model
    class never calls it, and torchaudio has no wheel for the torch this project pins: an empty
    stand-in lets the import through when torchaudio is not installed."""
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    try:
        from openunmix.model import OpenUnmix
    except ImportError:
        sys.exit("the peer needs Open-Unmix: pip install --no-deps openunmix==1.3.0")
    return OpenUnmix


def magnitudes(audio: np.ndarray, config: ExperimentConfig) -> torch.Tensor:
    """|STFT| of (..., n_samples) audio by karaoke's transform -> (..., n_bins, n_frames) float32."""
    from karaoke.spectral import stft

    return torch.from_numpy(np.abs(stft(audio.astype(np.float32), config.stft)).astype(np.float32))


def random_excerpts(songs: list[MixedSong], rng: np.random.Generator, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Open-Unmix's random track mix: BATCH excerpts of n_samples, each the voice of one random clip
    over the accompaniment of another, each source at its own random gain. Returns (mixture, vocals),
    each (BATCH, n_samples)."""

    def excerpt(signal: np.ndarray) -> np.ndarray:
        if len(signal) <= n_samples:
            return np.pad(signal, (0, n_samples - len(signal)))
        start = rng.integers(0, len(signal) - n_samples)
        return signal[start : start + n_samples]

    vocals = np.stack([excerpt(songs[i].vocals) * rng.uniform(*GAIN_RANGE) for i in rng.integers(0, len(songs), BATCH)])
    accompaniment = np.stack(
        [excerpt(songs[i].accompaniment) * rng.uniform(*GAIN_RANGE) for i in rng.integers(0, len(songs), BATCH)]
    )
    return vocals + accompaniment, vocals


def input_statistics(songs: list[MixedSong], config: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean and standard deviation of the training mixtures' magnitudes, (n_bins,) each, as
    Open-Unmix's `get_statistics` computes them for its input standardisation."""
    frames = torch.cat([magnitudes(song.mixture, config).T for song in songs]).double()
    return frames.mean(0).numpy(), frames.std(0).clamp_min(1e-8).numpy()


def train_peer(
    config: ExperimentConfig, songs: list[MixedSong], seconds: float, clock=time.perf_counter, seed: int = 0, log=print
) -> tuple[torch.nn.Module, int]:
    """Train an OpenUnmix network until `seconds` have passed on `clock` (wall time, or
    `time.process_time` for this process's CPU time over all its threads); returns (model in eval
    mode, steps)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = input_statistics(songs, config)
    model = openunmix_class()(nb_bins=config.stft.n_bins, nb_channels=1, input_mean=mean, input_scale=std)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    n_samples = int(EXCERPT_SECONDS * config.corpus.sample_rate)
    start, steps, losses = clock(), 0, []
    model.train()
    while clock() - start < seconds:
        mixture, vocals = random_excerpts(songs, rng, n_samples)
        # (batch, channels = 1, n_bins, n_frames), as OpenUnmix.forward takes a spectrogram
        estimate = model(magnitudes(mixture, config)[:, None])
        loss = torch.nn.functional.mse_loss(estimate, magnitudes(vocals, config)[:, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps, losses = steps + 1, losses + [loss.item()]
        if steps % 50 == 0:
            log(f"  step {steps}: loss {np.mean(losses[-50:]):.5f} ({clock() - start:.0f} s)")
    return model.eval(), steps


@dataclass(frozen=True)
class PeerEstimator:
    """karaoke's `MaskEstimator` protocol around the peer: p = min(|V_hat| / |X|, 1) per bin."""

    model: torch.nn.Module
    config: ExperimentConfig
    method: str = "openunmix"

    @torch.no_grad()
    def vocal_probability(self, features: SongFeatures) -> np.ndarray:
        mixture = torch.from_numpy(np.abs(features.mixture_stft).astype(np.float32))
        estimate = self.model(mixture[None, None])[0, 0]
        return (estimate / mixture.clamp_min(1e-12)).clamp(0, 1).numpy()


def karaoke_row(location: str) -> dict:
    """karaoke's result to print beside the peer's: a `karaoke run` folder (its DNN row with the
    config's mask from results.json, and the dnn stage's seconds) or a `mir1k_quality.py --json` file."""
    path = Path(location)
    if not path.is_dir():
        return json.loads(path.read_text())
    methods = json.loads((path / "results.json").read_text())["methods"]["dnn"]
    row = methods.get("soft") or methods["alpha"]
    seconds = json.loads((path / "stages" / "dnn.json").read_text())["seconds"]
    return {"name": f"karaoke run {path.name}", "valid_clips": row["n_songs"],
            "dnn": {"0.5": row, "best": row, "mask": row["mask"], "train_seconds": seconds}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/mir1k.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--karaoke", default=None, metavar="RUN_OR_JSON",
                        help="a karaoke run folder or a mir1k_quality.py --json result: its row and training time")
    parser.add_argument("--seconds", type=float, default=None, help="training budget in wall seconds (default: the --karaoke row's)")
    parser.add_argument("--cpu-seconds", type=float, default=None,
                        help="training budget in this process's CPU seconds instead (e.g. the CPU time of karaoke's training workers)")
    parser.add_argument("--valid-every", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    karaoke = karaoke_row(args.karaoke) if args.karaoke else None
    seconds = args.cpu_seconds or args.seconds or (karaoke["dnn"]["train_seconds"] if karaoke else None)
    clock, unit = (time.process_time, "CPU s") if args.cpu_seconds else (time.perf_counter, "s")
    if not seconds:
        sys.exit("give --seconds, or --karaoke with a result that has a DNN's training time")
    valid_songs = load_songs(config, "valid", every=args.valid_every)
    if karaoke and karaoke["valid_clips"] != len(valid_songs):
        sys.exit(f"{args.karaoke} was scored on {karaoke['valid_clips']} clips: use its --valid-every and corpus")
    train_songs = load_songs(config, "train")
    print(f"Open-Unmix: {len(train_songs)} training clips, {seconds:.0f} {unit} of training on {args.threads} threads, "
          f"{len(valid_songs)} validation clips", flush=True)
    started = time.perf_counter()
    model, steps = train_peer(config, train_songs, seconds, clock, args.seed, log=lambda line: print(line, flush=True))
    wall = time.perf_counter() - started
    half = load_config(args.config, args.overrides + ["evaluation.alphas=[0.5]"])
    rows = score_method(PeerEstimator(model, config), valid_songs, half, ["soft"])["soft"]
    results = {"name": "openunmix", "valid_clips": len(valid_songs), "steps": steps,
               "openunmix": {**summary(rows), "mask": "soft", "train_seconds": wall, "train_budget": f"{seconds:.0f} {unit}", "rows": rows}}
    print("| method | alpha | vocal GNSDR / GSIR / GSAR | accomp. GNSDR / GSIR / GSAR | best alpha | vocal | accomp. | train |")
    if karaoke:
        print(format_row(f"{karaoke['name']} ({karaoke['dnn']['mask']})", karaoke["dnn"], karaoke["dnn"]["train_seconds"]))
    print(format_row(f"Open-Unmix, {steps} steps, {seconds:.0f} {unit} (soft)", results["openunmix"], wall))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
