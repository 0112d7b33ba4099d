"""The bookkeeping of `karaoke run` (see pipelines/run.py): where a run lives, the record each
finished stage leaves in RUN/stages/, the checks a rerun makes before skipping a stage, and the
guard that keeps training of another model from being resumed or overwritten."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Run:
    """Where a run lives: `root` is a folder or URL; `config` is the effective config (after tuning)."""

    root: str
    config: Any

    def path(self, *parts: str) -> str:
        from karaoke.storage import join

        return join(self.root, *parts)


def digest(config, stage: str) -> str:
    from karaoke.config import STAGE_SECTIONS, config_digest

    return config_digest(config, *STAGE_SECTIONS[stage])


def finished(run: Run, stage: str, check: Callable[[], str]) -> dict | None:
    """The stage's record when it finished with this config and `check()` passes (it returns what it
    verified, or raises); else None."""
    from karaoke.errors import KaraokeError
    from karaoke.storage import read_json

    record = read_json(run.path("stages", f"{stage}.json"))
    if not record or record.get("digest") != digest(run.config, stage):
        return None
    try:
        print(f"  done before: {check()}")
    except (KaraokeError, OSError) as exc:
        print(f"  its outputs fail their check ({exc}); running it again")
        return None
    return record


def run_stage(run: Run, stage: str, number: int, check: Callable[[], str], work: Callable[[], dict]) -> dict:
    """Run `work` unless the stage finished before; record it. Returns the stage's record."""
    from karaoke.config import STAGE_SECTIONS
    from karaoke.storage import write_json

    print(f"\n[{number}/{len(STAGE_SECTIONS)}] {stage}", flush=True)
    with storage_errors(run, f"the {stage} stage"):
        record = finished(run, stage, check)
        if record is not None:
            return record
        start = time.perf_counter()
        outputs = work()
        record = {
            "stage": stage,
            "digest": digest(run.config, stage),
            "seconds": round(time.perf_counter() - start, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **outputs,
        }
        write_json(run.path("stages", f"{stage}.json"), record)
    print(f"  finished in {record['seconds']:.1f} s", flush=True)
    return record


@contextmanager
def storage_errors(run: Run, during: str) -> Iterator[None]:
    """A failure while the run's storage does not answer (an s3:// endpoint down, wrapped in
    whatever layer met it: a Ray task, a Train worker, s3fs, pyarrow) is `StorageError`, one line
    naming the storage and its client's reason; any other failure passes unchanged. A stage records
    itself only once its outputs are written, so the same command resumes once the storage answers."""
    from karaoke.errors import KaraokeError, StorageError
    from karaoke.storage import unreachable

    try:
        yield
    except KaraokeError:
        raise
    except Exception:
        reason = unreachable(run.root)
        if reason is None:
            raise
        raise StorageError(
            f"{run.root}: the run's storage stopped answering during {during} ({reason}); the stages "
            "finished before are kept: run the same command again once it answers"
        ) from None


# --- checks: what a finished stage's outputs must pass --------------------------------------------


def check_dataset(run: Run) -> str:
    from karaoke.config import DATA_SECTIONS, config_digest
    from karaoke.dataset import DatasetError, load_manifest
    from karaoke.storage import open_fs

    dataset = run.path("dataset")
    manifest = load_manifest(dataset)
    if manifest["config_digest"] != config_digest(run.config, *DATA_SECTIONS):
        raise DatasetError(f"{dataset}: prepared with other corpus/stft/windows settings")
    fs, root = open_fs(dataset)
    present = set(fs.find(root))
    listed = [f for split in manifest["splits"].values() for f in split["window_files"] + split["song_files"]]
    missing = [f for f in listed if f"{root}/{f}" not in present]
    if missing:
        raise DatasetError(f"{dataset}: the manifest lists {len(missing)} missing shards, e.g. {missing[0]}")
    return f"{dataset}: {len(listed)} shards of {sum(s['songs'] for s in manifest['splits'].values())} songs"


def check_dnn(run: Run) -> str:
    from karaoke.checkpoint import latest_checkpoint
    from karaoke.errors import CheckpointError
    from karaoke.models.dnn import load_dnn
    from karaoke.storage import local_copy

    last = latest_checkpoint(run.path("dnn"))
    if last is None:
        raise CheckpointError(f"{run.path('dnn')}: no checkpoint")
    with local_copy(last) as folder:
        _, _, card = load_dnn(folder, run.config)  # verifies the tensors' SHA-256 and the config
    if card["epoch"] != run.config.train.epochs:
        raise CheckpointError(f"{last}: epoch {card['epoch']} of {run.config.train.epochs}")
    return f"{last} (epoch {card['epoch']}, verified)"


def check_nmf(run: Run) -> str:
    from karaoke.models.nmf import load_bases
    from karaoke.storage import local_copy

    with local_copy(run.path("nmf", "bases")) as folder:
        W_v, _, card = load_bases(folder, run.config)
    return f"{run.path('nmf', 'bases')} ({W_v.shape[1]} bases per source, iteration {card['iteration']}, verified)"


def check_scores(location: str, methods: list[str], evaluation) -> str:
    from karaoke.report import ScoresError, read_scores
    from karaoke.storage import local_copy
    from pipelines.evaluate import scored_grid

    with local_copy(location) as folder:
        rows = read_scores(Path(folder) / "scores.parquet")
    found = {(r["method"], r["mask"], round(r["alpha"], 6)) for r in rows}
    wanted = {(m, mode, round(a, 6)) for m in methods for mode, alphas in scored_grid(m, evaluation) for a in alphas}
    if not wanted <= found:
        raise ScoresError(f"{location}: lacks scores for {sorted(wanted - found)[:3]}...")
    return f"{location}: {len(rows)} rows"


def check_tune(run: Run) -> str:
    from karaoke.errors import KaraokeError
    from karaoke.storage import exists
    from pipelines.tune import BEST, MARKER

    if not exists(run.path("tune", BEST, MARKER)):
        raise KaraokeError(f"{run.path('tune', BEST, MARKER)} is missing (the tune did not finish)")
    return run.path("tune", BEST)


def check_report(run: Run) -> str:
    from karaoke.errors import KaraokeError
    from karaoke.storage import exists

    for name in ("report/report.md", "report/figure2.png", "report/figure3.png", "results.json"):
        if not exists(run.path(name)):
            raise KaraokeError(f"{run.path(name)} is missing")
    return run.path("report", "report.md")


def guard(run: Run, folder: str, kind: str) -> None:
    """Refuse to train a `kind` ("dnn", "nmf") model into `folder` when it holds training made with
    other `karaoke.config.TRAINING_KEYS` values: resuming would label those weights with this
    config. More training of the same model (a larger `CONTINUABLE_KEYS` value; for the DNN only
    under a constant learning rate, whose earlier epochs do not depend on the number of epochs) is
    allowed; fewer is refused, since the folder already holds the longer training."""
    import yaml

    from karaoke.config import CONTINUABLE_KEYS, TRAINING_KEYS, config_to_dict
    from karaoke.errors import CheckpointError
    from karaoke.storage import join, open_fs

    fs, path = open_fs(join(folder, "config.yaml"))
    if not fs.isfile(path):
        return
    with fs.open(path, "rb") as handle:
        before = _leaves(yaml.safe_load(handle.read()) or {}, TRAINING_KEYS[kind])
    now = _leaves(config_to_dict(run.config), TRAINING_KEYS[kind])
    growing = set(CONTINUABLE_KEYS[kind])
    if kind == "dnn" and run.config.train.lr_schedule != "constant":
        growing.clear()
    changed = [
        key for key in sorted(set(before) | set(now))
        if before.get(key) != now.get(key)
        and not (key in growing and isinstance(before.get(key), int) and now[key] > before[key])
    ]
    if changed:
        details = ", ".join(f"{key}: {before.get(key)!r} there, {now.get(key)!r} here" for key in changed)
        raise CheckpointError(
            f"{folder}: holds training of another model ({details}); choose another --out, or delete "
            "that folder to train it again"
        )


def _leaves(data: dict, keys: tuple[str, ...]) -> dict[str, Any]:
    """The dotted leaf keys and values of `data` under each of `keys` (sections or dotted keys)."""
    found: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, f"{prefix}.{name}")
        else:
            found[prefix] = node

    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        walk(node, key)
    return found
