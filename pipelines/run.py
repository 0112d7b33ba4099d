"""The main job: the whole experiment of a config into one run directory.

    python -m pipelines.run --config configs/demo.yaml      (same as `karaoke run`)

Stages so far: build or list the corpus, then separate the evaluation songs with the ideal binary
mask and score them with mir_eval (the upper bound of the paper's Figure 2).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def ibm_stage(config, run_dir: Path) -> list[dict]:
    """Separate every evaluation song with its IBM; write the audio and the scores."""
    from tqdm import tqdm

    from karaoke.audio import write_audio
    from karaoke.corpora import list_songs
    from karaoke.oracle import ibm_scores

    songs = list_songs(config.corpus, split=config.evaluation.split)
    if not songs:
        raise SystemExit(f"no songs in split {config.evaluation.split!r} of {config.corpus.root}")
    out = run_dir / "ibm"
    rows = []
    for song in tqdm(songs, desc="IBM separation"):
        mixed = song.load(config.corpus.sample_rate, config.corpus.mixing)
        scores, vocals, accompaniment = ibm_scores(mixed, config)
        for name, audio in (("mixture", mixed.mixture), ("vocals", vocals), ("accompaniment", accompaniment)):
            write_audio(out / song.song_id / f"{name}.wav", audio, mixed.sample_rate)
        rows.append({"song_id": song.song_id, "seconds": mixed.seconds, **scores.as_dict()})
    (out / "scores.json").write_text(json.dumps(rows, indent=2))
    return rows


def run_experiment(config_path: str, overrides=(), run_dir: str | None = None) -> Path:
    from karaoke.config import load_config, save_config

    config = load_config(config_path, overrides)
    run_path = Path(run_dir or f"runs/{config.name}")
    run_path.mkdir(parents=True, exist_ok=True)
    save_config(config, run_path / "config.yaml")
    start = time.perf_counter()
    rows = ibm_stage(config, run_path)
    print(f"\nIdeal binary mask on {len(rows)} {config.evaluation.split} songs (mir_eval BSS-EVAL, dB):")
    print(f"{'song':<28}{'vocal SDR':>10}{'vocal SIR':>10}{'vocal SAR':>10}{'acc SDR':>10}")
    for row in rows:
        print(
            f"{row['song_id']:<28}{row['vocals_sdr']:>10.2f}{row['vocals_sir']:>10.2f}"
            f"{row['vocals_sar']:>10.2f}{row['accompaniment_sdr']:>10.2f}"
        )
    print(f"run directory: {run_path}  ({time.perf_counter() - start:.1f} s)")
    return run_path


def main(argv=None) -> None:
    from karaoke.cli import run

    run.main(args=argv, prog_name="python -m pipelines.run")


if __name__ == "__main__":
    main()
