"""Ray Data job of `karaoke separate -j N`: songs separated on N model replicas.

    karaoke separate DIR_OR_S3_PREFIX... -j N [-d cuda] [-o OUT_OR_S3_PREFIX]

One pipeline: a dataset of the songs (path and track name: one row and one block per song, so the
driver holds a few strings per song however long they are) -> `map_batches` on a pool of N actors,
each holding one `karaoke.Separator` loaded once. A replica reads its song (local or URL, streamed
in blocks), separates it and writes vocals and accompaniment to OUT/<model>/<track>/ itself
(`Separator.separate_file`: a URL gets each file complete or not at all), so no audio enters the
object store -> one status row per song. The replicas share the machine: each takes 1/N of the
cluster's CPUs and as many torch threads (at least one); with `-d cuda`, one GPU each. A song goes
to the first replica that is free, so songs of unequal length keep every replica busy to the end.

A replica killed mid-song (the out-of-memory killer, a lost node) is replaced and its song done
again from the start; a song's files appear only once complete, so the retry finds none of its
half-written ones. A song on which the replicas fail `SONG_ATTEMPTS` times is reported as failed,
and the batch goes on: it neither stops the other songs nor retries forever.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import ray.data

SONG_ATTEMPTS = 3


class _Replica:
    """One actor of the pool: a Separator loaded once, then one song per call."""

    def __init__(self, options: dict[str, Any], threads: int, folder: str, audio_format: str, bit_depth: str | None) -> None:
        import torch

        from karaoke.separator import Separator

        torch.set_num_threads(threads)
        self.separator = Separator.from_pretrained(**options)
        self.folder, self.audio_format, self.bit_depth = folder, audio_format, bit_depth

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        import resource

        from karaoke.errors import AudioError, OutputError
        from karaoke.storage import join

        paths, tracks = [str(p) for p in batch["path"]], [str(t) for t in batch["track"]]
        errors: list[str | None] = []
        for path, track in zip(paths, tracks):
            try:
                self.separator.separate_file(path, join(self.folder, track), self.audio_format, self.bit_depth)
                errors.append(None)
            except (AudioError, OutputError) as exc:
                errors.append(str(exc))
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        n = len(paths)
        return {"path": paths, "track": tracks, "error": errors, "replica": [os.getpid()] * n, "peak_mib": [peak_mib] * n}


def _absolute(location: str) -> str:
    """A URL as it is, a local path made absolute: replicas do not run in the driver's folder."""
    from karaoke.storage import is_url

    return location if is_url(location) else os.path.abspath(location)


def _replica_options(options: dict[str, Any], use_gpu: bool) -> dict[str, Any]:
    """`Separator.from_pretrained` arguments for a replica: the model the driver found (a URL stays
    a URL, which each node caches once; anything else becomes the driver's resolved folder) on the
    replica's device (its GPU, or the CPU: `-j` without `-d cuda` never takes a GPU)."""
    from karaoke.model_store import URL_SCHEMES, locate_model

    spec = options.get("name_or_path")
    if spec is None or not str(spec).startswith(URL_SCHEMES):
        spec = str(locate_model(spec).resolve())
    return {**options, "name_or_path": spec, "device": "cuda" if use_gpu else "cpu"}


def separate_on_ray(
    songs: list[tuple[str, str]],
    folder: str,
    options: dict[str, Any],
    audio_format: str = "wav",
    bit_depth: str | None = None,
    jobs: int = 2,
) -> Iterator[dict[str, Any]]:
    """Separate `songs` ((path or URL, track name) pairs) into `folder/<track>/` (a folder or URL)
    on `jobs` replicas (fewer when there are fewer songs), each a
    `Separator.from_pretrained(**options)`. Returns an iterator of one status row per song as it
    finishes: path, track, error (None, or the one line naming the file as given and the reason),
    and the replica's process id and peak resident memory so far (`peak_mib`; both None for a song
    its replicas failed on). `ConfigError` when `-d cuda` asks for more GPUs than the cluster has.
    Needs a connected Ray."""
    import ray

    from karaoke.errors import ConfigError

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    use_gpu = options.get("device") == "cuda"
    if use_gpu and gpus < jobs:
        if not gpus:
            raise ConfigError(f"-d cuda -j {jobs}: the Ray cluster has no GPU; use -d cpu")
        raise ConfigError(f"-d cuda -j {jobs}: each replica takes a GPU and the Ray cluster has {gpus:g}; use -j {int(gpus)} or fewer")
    # Ray counts resources to 4 decimals: rounding a share up would leave the last replica unplaced.
    share = math.floor(cpus / jobs * 1e4) / 1e4
    given = {_absolute(path): path for path, _ in songs}
    items = [{"path": _absolute(path), "track": track} for path, track in songs]
    constructor = {
        "options": _replica_options(options, use_gpu), "threads": max(1, int(cpus) // jobs),
        "folder": _absolute(str(folder)), "audio_format": audio_format, "bit_depth": bit_depth,
    }
    # A Dataset copies the current DataContext when it is created, so the settings go first. The
    # command draws its own bar over the songs; one map operator has no CPUs to reserve for others;
    # a song whose task fails for good is an errored block, which with no limit on them leaves
    # that song without a status row (`_rows` reports it) instead of ending the execution.
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.op_resource_reservation_enabled, context.max_errored_blocks
    context.enable_progress_bars = False
    context.op_resource_reservation_enabled = False
    context.max_errored_blocks = -1
    try:
        # One block per song, one song in flight per replica: a replica asks for the next song when
        # it is free, instead of queueing one behind its current song while another replica idles.
        pool = ray.data.ActorPoolStrategy(size=min(jobs, len(items)), max_tasks_in_flight_per_actor=1)
        with warnings.catch_warnings():
            # Ray Data restarts a dead replica without limit and by default retries its task without
            # limit too, so a song that kills its replica every time would never end; Ray 2.60 takes
            # the bound only among the remote arguments it deprecates, and warns on the console.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
                _Replica, batch_size=1, compute=pool, num_cpus=share, num_gpus=1 if use_gpu else 0,
                fn_constructor_kwargs=constructor, max_task_retries=SONG_ATTEMPTS - 1,
            )
    finally:
        context.enable_progress_bars, context.op_resource_reservation_enabled, context.max_errored_blocks = saved
    return _rows(results, given, {item["path"]: item["track"] for item in items}, constructor["folder"], audio_format)


def _rows(
    results: ray.data.Dataset, given: dict[str, str], tracks: dict[str, str], folder: str, audio_format: str
) -> Iterator[dict[str, Any]]:
    """The status rows, each path (and the error line that starts with it) as the caller gave it,
    then a failed row for each song that has none (its replicas failed on it), whatever its killed
    replicas left in `folder` removed; a replica that cannot load its model raises that one line
    here instead of Ray's wrapped traceback."""
    from karaoke.errors import CheckpointError, ConfigError
    from karaoke.separate import discard_separation
    from pipelines.ray_runtime import unwrap_error

    missing = dict(tracks)
    try:
        for row in results.iter_rows():
            path, error = row["path"], row["error"]
            if error is not None and error.startswith(f"{path}:"):
                error = given[path] + error[len(path):]
            missing.pop(path)
            yield {**row, "path": given[path], "error": error}
    except Exception as exc:
        for error in (ConfigError, CheckpointError):
            unwrapped = unwrap_error(exc, error)
            if unwrapped is not None:
                raise unwrapped from None
        raise
    for path, track in missing.items():
        discard_separation(folder, track, audio_format)
        error = (f"{given[path]}: not separated: its replicas died on it {SONG_ATTEMPTS} times or failed unexpectedly "
                 "(Ray's session logs say which); if memory ran out, use a smaller -j or --chunk-seconds")
        yield {"path": given[path], "track": track, "error": error, "replica": None, "peak_mib": None}
