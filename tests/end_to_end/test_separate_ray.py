"""`karaoke separate -j 2`: real MIR-1K clips separated on two Ray replicas with the default model
give the files of the in-process run, a bad file is reported and skipped, s3:// prefixes in and
out, a GPU request the cluster cannot meet is refused in one line, a replica killed mid-song is
replaced and its song done again, and a song that kills every replica taking it is reported."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from karaoke_cli.main import main
from pipelines.separate import SONG_ATTEMPTS
from tests.processes import descendants, open_files, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

SECONDS = 3.0


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)), catch_exceptions=False)


def report_lines(output: str) -> list[str]:
    """The command's own lines; the progress bars (on stderr) may run into them."""
    return re.findall(r"(?:wrote |failed: |separated \d)[^\r\n]*", output)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def songs(mir1k_root, tmp_path_factory) -> Path:
    """Four 3 s songs from MIR-1K clips (accompaniment left, voice right): a stereo 16 kHz WAV, a
    mono mixture, a 44.1 kHz stereo FLAC in a subfolder and another mono mixture."""
    from karaoke.audio import resample

    clips = sorted((mir1k_root / "Wavfile").glob("*.flac"))[:4]
    folder = tmp_path_factory.mktemp("songs")
    (folder / "live").mkdir()
    for index, clip in enumerate(clips):
        audio, rate = sf.read(clip, dtype="float32", frames=int(16000 * SECONDS))
        if index == 0:
            sf.write(folder / "stereo.wav", audio, rate)
        elif index == 2:
            sf.write(folder / "live" / "hifi.flac", resample(audio.T, rate, 44100).T, 44100)
        else:
            sf.write(folder / f"mono_{index}.wav", audio.mean(axis=1), rate)
    return folder


def test_two_replicas_write_the_files_of_the_in_process_run(ray_session, songs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    serial = run("separate", songs, "-o", one, "-d", "cpu")
    parallel = run("separate", songs, "-o", two, "-d", "cpu", "-j", 2)
    assert serial.exit_code == 0 and parallel.exit_code == 0, parallel.output
    assert report_lines(parallel.output) == [line.replace(str(one), str(two)) for line in report_lines(serial.output)]
    assert report_lines(parallel.output)[-1] == f"separated 4 of 4 files into {two / 'mir1k'}"
    assert files_under(one) == files_under(two) == [
        "mir1k/config.yaml", *(f"mir1k/{track}/{part}.wav" for track in ("live/hifi", "mono_1", "mono_3", "stereo")
                               for part in ("accompaniment", "vocals")),
    ]
    for name in files_under(one):
        if name.endswith(".wav"):
            a, b = sf.info(one / name), sf.info(two / name)
            assert (a.samplerate, a.channels, a.frames) == (b.samplerate, b.channels, b.frames)
            np.testing.assert_allclose(sf.read(two / name)[0], sf.read(one / name)[0], rtol=0, atol=1e-6)
    assert sf.info(two / "mir1k" / "live" / "hifi" / "vocals.wav").samplerate == 44100


def test_a_bad_file_is_reported_and_skipped_leaving_no_partial_folder(ray_session, songs, tmp_path, monkeypatch):
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in ("stereo.wav", "mono_1.wav"):
        (folder / name).write_bytes((songs / name).read_bytes())
    (folder / "cut.wav").write_bytes((songs / "mono_3.wav").read_bytes()[:20000])
    (folder / "junk.mp3").write_bytes(b"not audio at all")
    monkeypatch.chdir(tmp_path)  # relative paths, as typed: the replicas run elsewhere
    result = run("separate", "batch", "-o", "out", "-j", 2)
    assert result.exit_code == 1
    lines = report_lines(result.output)
    assert any(line.startswith("failed: batch/cut.wav: truncated audio: the header promises") for line in lines), lines
    assert any(line.startswith("failed: batch/junk.mp3: cannot decode audio") for line in lines), lines
    assert lines[-1] == "separated 2 of 4 files into out/mir1k; 2 failed (listed above)"
    out = tmp_path / "out"
    everything = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))  # hidden files and folders too
    assert everything == [
        "mir1k", "mir1k/config.yaml", "mir1k/mono_1", "mir1k/mono_1/accompaniment.wav", "mir1k/mono_1/vocals.wav",
        "mir1k/stereo", "mir1k/stereo/accompaniment.wav", "mir1k/stereo/vocals.wav",
    ]


def test_an_s3_prefix_in_and_out(ray_session, s3_endpoint, songs, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    for name in ("stereo.wav", "live/hifi.flac"):
        fs.put_file(str(songs / name), f"test-bucket/music/{name}")
    parallel = run("separate", "s3://test-bucket/music/", "-o", "s3://test-bucket/separated", "-j", 2)
    assert parallel.exit_code == 0, parallel.output
    assert report_lines(parallel.output)[-1] == "separated 2 of 2 files into s3://test-bucket/separated/mir1k"
    fs.invalidate_cache()
    assert sorted(fs.find("test-bucket/separated")) == [
        f"test-bucket/separated/mir1k/{name}" for name in
        ("config.yaml", "live/hifi/accompaniment.wav", "live/hifi/vocals.wav", "stereo/accompaniment.wav", "stereo/vocals.wav")
    ]
    # The in-process path reads the same prefix and gives the same files.
    local = tmp_path / "local"
    serial = run("separate", "s3://test-bucket/music", "-o", local)
    assert serial.exit_code == 0, serial.output
    for track in ("stereo", "live/hifi"):
        for part in ("vocals", "accompaniment"):
            with fs.open(f"test-bucket/separated/mir1k/{track}/{part}.wav", "rb") as handle:
                uploaded = sf.read(handle)[0]
            np.testing.assert_allclose(uploaded, sf.read(local / "mir1k" / track / f"{part}.wav")[0], rtol=0, atol=1e-6)


def test_an_upload_that_fails_is_reported_and_leaves_nothing(s3_endpoint, songs):
    import s3fs

    result = run("separate", songs / "stereo.wav", "-o", "s3://no-such-bucket/separated")
    assert result.exit_code == 1
    lines = report_lines(result.output)
    assert lines[0].startswith("failed: s3://no-such-bucket/separated/mir1k/stereo: cannot upload the separation ("), lines
    assert lines[0].endswith("); check the bucket and its credentials")
    assert lines[-1] == "separated 0 of 1 file into s3://no-such-bucket/separated/mir1k; 1 failed (listed above)"
    assert "no-such-bucket" not in s3fs.S3FileSystem(endpoint_url=s3_endpoint).ls("")


def test_more_gpu_replicas_than_the_cluster_has_is_a_one_line_error(ray_session, songs, tmp_path):
    if ray_session.cluster_resources().get("GPU", 0) >= 2:
        pytest.skip("this Ray cluster has two GPUs: the refusal needs fewer")
    result = run("separate", songs, "-o", tmp_path / "out", "-d", "cuda", "-j", 2)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: -d cuda -j 2: ")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


# --- replicas killed mid-song ----------------------------------------------------------------------

REPLICA = "ray::MapWorker(MapBatches(_Replica))"  # Ray Data's actor around pipelines.separate._Replica


@pytest.fixture(scope="module")
def long_songs(mir1k_root, tmp_path_factory) -> Path:
    """Six 44.1 kHz stereo songs of three MIR-1K clips each (about 25 s: seconds of work on one core,
    so a replica is caught writing one): accompaniment left of the centred voice."""
    from karaoke.audio import resample

    clips = sorted((mir1k_root / "Wavfile").glob("*.flac"))[:18]
    folder = tmp_path_factory.mktemp("long")
    for index in range(6):
        audio = np.concatenate([sf.read(clip, dtype="float32")[0] for clip in clips[3 * index : 3 * index + 3]])
        accompaniment, voice = audio.T
        stereo = resample(np.stack([accompaniment + voice, 0.7 * accompaniment + voice]), 16000, 44100)
        sf.write(folder / f"song_{index}.wav", (0.5 * stereo).T, 44100, subtype="PCM_16")
    return folder


def _replica_writing(out: Path) -> tuple[int, str] | None:
    """(pid, track) of one of our replicas holding a partial file under `out` open, or None."""
    for pid in sorted(descendants(REPLICA)):
        for name in open_files(pid):
            if name.startswith(f"{out}{os.sep}") and name.endswith(".partial"):
                return pid, Path(name).parent.relative_to(out / "mir1k").as_posix()
    return None


def _written(out: Path, songs: Path, tracks: list[str]) -> None:
    """Each track's vocals and accompaniment are complete: its input's rate, channels and length."""
    for track in tracks:
        source = sf.info(songs / f"{track}.wav")
        for part in ("vocals", "accompaniment"):
            info = sf.info(out / "mir1k" / track / f"{part}.wav")
            assert (info.samplerate, info.channels, info.frames) == (source.samplerate, source.channels, source.frames)


def test_a_replica_killed_mid_song_is_replaced_and_the_song_done_again(ray_session, long_songs, tmp_path):
    """Fault: SIGKILL of a replica while it writes a song, once the first song is written.
    Expected: Ray starts a replacement and the song is separated again; every song is written once,
    complete, the killed one equal to the in-process separation; no partial file; exit status 0."""
    from karaoke.separator import Separator

    out = tmp_path / "out"
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(run, "separate", long_songs, "-o", out, "-d", "cpu", "-j", 2)
        wait_for(lambda: any((out / "mir1k").glob("*/accompaniment.wav")), job, "first song written")
        caught: list = []
        wait_for(lambda: caught.append(_replica_writing(out)) or caught[-1] is not None, job, "replica writing a song")
        pid, track = caught[-1]
        replicas = descendants(REPLICA)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: bool(descendants(REPLICA) - replicas), job, "replacement replica")
        result = job.result()
    assert result.exit_code == 0, result.output
    tracks = [f"song_{index}" for index in range(6)]
    lines = report_lines(result.output)
    assert sorted(lines[:-1]) == [f"wrote {out / 'mir1k' / t}" for t in tracks]
    assert lines[-1] == f"separated 6 of 6 files into {out / 'mir1k'}"
    everything = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())  # hidden ones too
    assert everything == ["mir1k/config.yaml", *(f"mir1k/{t}/{part}.wav" for t in tracks for part in ("accompaniment", "vocals"))]
    _written(out, long_songs, tracks)
    again = Separator.from_pretrained(device="cpu").separate_file(long_songs / f"{track}.wav", tmp_path / "again")
    for part in ("vocals", "accompaniment"):
        np.testing.assert_allclose(sf.read(out / "mir1k" / track / f"{part}.wav")[0], sf.read(again / f"{part}.wav")[0], rtol=0, atol=1e-6)


def test_a_song_that_kills_every_replica_taking_it_is_reported_and_the_rest_written(ray_session, long_songs, tmp_path):
    """Fault: SIGKILL of every replica that writes one chosen song (song_4), on each attempt.
    Expected: after SONG_ATTEMPTS attempts that song is listed as failed in one line and nothing of
    it is left; the other five are written complete; the summary counts the failure; exit status 1."""
    out, victim = tmp_path / "out", "song_4"
    kills = 0
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(run, "separate", long_songs, "-o", out, "-d", "cpu", "-j", 2)
        while not job.done():
            caught = _replica_writing(out)
            if caught is not None and caught[1] == victim:
                killed = caught[0]
                os.kill(killed, signal.SIGKILL)
                kills += 1
                wait_for(lambda pid=killed: pid not in descendants(REPLICA), job, "the killed replica gone")
            time.sleep(0.05)
        result = job.result()
    assert kills == SONG_ATTEMPTS
    assert result.exit_code == 1, result.output
    lines = report_lines(result.output)
    assert f"failed: {long_songs / victim}.wav: not separated: its replicas died on it {SONG_ATTEMPTS} times" in " ".join(lines)
    assert lines[-1] == f"separated 5 of 6 files into {out / 'mir1k'}; 1 failed (listed above)"
    tracks = [f"song_{index}" for index in range(6) if f"song_{index}" != victim]
    everything = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))  # hidden files and folders too
    assert everything == ["mir1k", "mir1k/config.yaml", *(
        name for t in tracks for name in (f"mir1k/{t}", f"mir1k/{t}/accompaniment.wav", f"mir1k/{t}/vocals.wav"))]
    _written(out, long_songs, tracks)
