"""Preparing songs into a dataset (the layout of `karaoke.dataset`): the per-song writer that the
Ray job `pipelines/prepare.py` runs over a corpus, the check of what a rerun can skip, and the
manifest the driver writes last.

A song's windows file is written last of its files and appears complete or not at all (written
beside the target and renamed; an S3 object only appears once its upload completes), so its presence
means "this song is done" to a rerun; its Parquet metadata carries the song's status.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from typing import Any, Sequence

import numpy as np

from karaoke.config import (
    DATA_SECTIONS,
    ExperimentConfig,
    config_digest,
    config_to_dict,
    save_config,
)
from karaoke.corpora.base import Song
from karaoke.dataset import (
    AUDIO_COLUMNS,
    FORMAT,
    MANIFEST,
    META_KEY,
    PARQUET_OPTIONS,
    SONG_SPLITS,
    SPLITS,
    TENSOR_COLUMNS,
    DatasetError,
    song_file,
    window_file,
)
from karaoke.errors import KaraokeError
from karaoke.features import remix_partners, song_features, song_training_rows
from karaoke.mixing import MixedSong
from karaoke.storage import join, open_fs, write_atomic

log = logging.getLogger(__name__)


def window_table(song_id: str, rows: dict[str, np.ndarray], n_bins: int, n_frames: int):
    """A pyarrow table of one song's windows (`rows` as from `karaoke.features.training_rows`)."""
    import pyarrow as pa

    n = len(rows["start_frame"])
    fields = [pa.field("song_id", pa.string()), pa.field("start_frame", pa.int64()), pa.field("remix", pa.int64())]
    remixes = rows["remix"] if "remix" in rows else np.zeros(n, np.int64)
    arrays = [pa.array([song_id] * n, pa.string()), pa.array(rows["start_frame"], pa.int64()), pa.array(remixes, pa.int64())]
    for name in TENSOR_COLUMNS:
        dtype = np.uint8 if name == "ibm" else np.float16
        values = _as_dtype(rows[name], dtype).reshape(n, n_bins, n_frames)
        tensor_type = pa.fixed_shape_tensor(pa.from_numpy_dtype(dtype), (n_bins, n_frames))
        storage = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), n_bins * n_frames)
        fields.append(pa.field(name, tensor_type))
        arrays.append(pa.ExtensionArray.from_storage(tensor_type, storage))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _as_dtype(values: np.ndarray, dtype: type) -> np.ndarray:
    """`values` as a C-contiguous array of `dtype`; float32 -> float16 goes through torch, whose
    vectorised conversion is ~3x numpy's (the same round-to-nearest-even result)."""
    if dtype is np.float16 and np.asarray(values).dtype == np.float32:
        import torch

        return torch.from_numpy(np.ascontiguousarray(values)).to(torch.float16).numpy()
    return np.ascontiguousarray(values, dtype=dtype)


def song_table(song: MixedSong):
    """A one-row pyarrow table of a song's float32 audio: the references exactly as mixed."""
    import pyarrow as pa

    columns = {"song_id": pa.array([song.song_id]), "split": pa.array([song.split]),
               "sample_rate": pa.array([song.sample_rate], pa.int64())}
    for name in AUDIO_COLUMNS:
        audio = np.asarray(getattr(song, name), dtype=np.float32)
        columns[name] = pa.LargeListArray.from_arrays(pa.array([0, len(audio)], pa.int64()), pa.array(audio))
    return pa.table(columns)


def _write_table(fs: Any, path: str, table, meta: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    write_atomic(fs, path, lambda handle: pq.write_table(table, handle, **PARQUET_OPTIONS))


def remix_partner_songs(song: Song, train_songs: Sequence[Song], config: ExperimentConfig) -> list[Song]:
    """The training songs (of `train_songs`, the corpus's train split) whose accompaniment goes under
    this training song's voice in its `windows.remixes` remixed copies (none for other splits, or
    with remixes off)."""
    if song.split != "train" or config.windows.remixes == 0:
        return []
    by_id = {other.song_id: other for other in train_songs}
    return [by_id[song_id] for song_id in remix_partners(song.song_id, list(by_id), config)]


def prepare_song(song: Song, config: ExperimentConfig, dataset: str, partners: Sequence[Song] = ()) -> dict[str, Any]:
    """Decode, mix, STFT, IBM and normalise one song and write its shards into `dataset`.

    A training song with `windows.remixes` > 0 also gets the windows of its remixes over each of
    `partners` (`remix_partner_songs`; see `karaoke.features.song_training_rows`), under its own
    song id and start frames.

    Returns its status: {song_id, split, status: "ok" | "failed", reason, seconds, n_windows, scale,
    files (relative to the dataset), config_digest}. A song that cannot be prepared is a "failed"
    status with the reason, never an exception, so one bad file does not stop a corpus.
    """
    status: dict[str, Any] = {"song_id": song.song_id, "split": song.split, "status": "failed", "reason": None,
                              "seconds": 0.0, "n_windows": 0, "scale": None, "files": [],
                              "config_digest": config_digest(config, *DATA_SECTIONS)}
    try:
        mixed = song.load(config.corpus.sample_rate, config.corpus.mixing)
        features = song_features(mixed, config)
        loaded = [partner.load(config.corpus.sample_rate, config.corpus.mixing) for partner in partners]
        rows = song_training_rows(mixed, features, config, loaded)
        table = window_table(song.song_id, rows, config.stft.n_bins, config.windows.n_frames)
    except Exception as exc:  # noqa: BLE001 - a song's failure is data for the manifest, not a crash
        status["reason"] = str(exc) if isinstance(exc, KaraokeError) else f"{type(exc).__name__}: {exc}"
        return status
    status.update(status="ok", seconds=mixed.seconds, n_windows=table.num_rows, scale=features.scale)
    fs, root = open_fs(dataset)
    # The windows file goes last: its presence marks the whole song as done.
    writes = [(window_file(song.split, song.song_id), table, status)]
    if song.split in SONG_SPLITS:
        writes.insert(0, (song_file(song.split, song.song_id), song_table(mixed), {}))
    status["files"] = [relative for relative, _, _ in writes]
    for relative, data, meta in writes:
        try:
            _write_table(fs, posixpath.join(root, relative), data, meta)
        except Exception as exc:  # noqa: BLE001 - storage down: the whole job stops, with one line
            raise DatasetError(
                f"{dataset}: cannot write {relative} ({type(exc).__name__}: {exc}); songs already written "
                "are kept: rerun the same command once the storage is reachable"
            ) from None
    return status


def done_songs(dataset: str, songs: list[Song], config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Statuses of the `songs` whose shards are already in `dataset` (read from their metadata).

    A windows shard that cannot be read (damaged after it was written) is deleted, with a warning
    naming it, so that its song is prepared again. Also deletes the hidden `.partial` files a killed run left behind. Raises `DatasetError` when a
    shard was made with other corpus/stft/windows settings.
    """
    import pyarrow.parquet as pq

    fs, root = open_fs(dataset)
    digest = config_digest(config, *DATA_SECTIONS)
    present: set[str] = set()
    for kind in ("windows", "songs"):
        for split in SPLITS:
            folder = posixpath.join(root, kind, split)
            if not fs.isdir(folder):
                continue
            for path in fs.ls(folder, detail=False):
                name = posixpath.basename(path)
                if name.startswith(".") and name.endswith(".partial"):
                    fs.rm(path)
                elif kind == "windows":
                    present.add(f"windows/{split}/{name}")
    done = {}
    for song in songs:
        relative = window_file(song.split, song.song_id)
        if relative not in present:
            continue
        path = posixpath.join(root, relative)
        try:
            with fs.open(path, "rb") as handle:
                status = json.loads(pq.read_metadata(handle).metadata[META_KEY])
        except Exception as exc:  # noqa: BLE001 - any unreadable shard is redone, whatever the reader says
            log.warning("%s: %s is damaged (%s: %s); preparing %s again", dataset, relative, type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "", song.song_id)
            fs.rm(path)
            continue
        if status.get("config_digest") != digest:
            raise DatasetError(
                f"{dataset}: {relative} was prepared with other corpus/stft/windows settings; "
                "prepare into a new folder or delete this one"
            )
        done[song.song_id] = status
    return done


def code_version() -> str:
    """The package version and, in a git checkout, the commit of the code that wrote a dataset."""
    import subprocess
    from importlib import metadata
    from pathlib import Path

    try:
        version = metadata.version("karaoke")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


def _check_shards_exist(dataset: str, fs: Any, root: str, files: list[str]) -> None:
    """Refuse to write a manifest listing shards the storage does not hold (e.g. an object store
    restarted empty during the job): a manifest never claims data that is not there."""
    present: set[str] = set()
    for kind in ("windows", "songs"):
        folder = posixpath.join(root, kind)
        if fs.isdir(folder):
            present.update(path.rstrip("/") for path in fs.find(folder))
    missing = [f for f in files if posixpath.join(root, f) not in present]
    if missing:
        raise DatasetError(
            f"{dataset}: {len(missing)} shard(s) of finished songs are gone from the storage (first: {missing[0]}); "
            "no manifest written: rerun the same command to prepare those songs again"
        )


def write_manifest(dataset: str, config: ExperimentConfig, statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """Write `config.yaml` and then `manifest.json` (last, atomically): the dataset is now complete."""
    fs, root = open_fs(dataset)
    statuses = sorted(statuses, key=lambda s: s["song_id"])
    ok = [s for s in statuses if s["status"] == "ok"]
    splits = {}
    for split in SPLITS:
        mine = [s for s in ok if s["split"] == split]
        splits[split] = {
            "songs": len(mine),
            "windows": sum(s["n_windows"] for s in mine),
            "seconds": sum(s["seconds"] for s in mine),
            "window_files": [s["files"][-1] for s in mine if s["n_windows"]],
            "song_files": [s["files"][0] for s in mine if split in SONG_SPLITS],
        }
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "config": config_to_dict(config),
        "config_digest": config_digest(config, *DATA_SECTIONS),
        "window_shape": [config.stft.n_bins, config.windows.n_frames],
        "dtypes": {"mixture": "float16", "vocals": "float16", "accompaniment": "float16", "ibm": "uint8",
                   "audio": "float32"},
        "failed": len(statuses) - len(ok),
        "splits": splits,
        "songs": [{k: v for k, v in s.items() if k != "config_digest"} for s in statuses],
    }
    _check_shards_exist(dataset, fs, root, [f for s in ok for f in s["files"]])
    save_config(config, join(dataset, "config.yaml"))
    payload = json.dumps(manifest, indent=1).encode()
    write_atomic(fs, posixpath.join(root, MANIFEST), lambda handle: handle.write(payload))
    return manifest
