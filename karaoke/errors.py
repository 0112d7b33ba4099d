"""Errors a user can act on: each names the file or key at fault and, where there is one, the fix."""

from __future__ import annotations


class KaraokeError(Exception):
    """Base class: the CLI prints these as one line instead of a traceback."""


class ConfigError(KaraokeError, ValueError):
    """A YAML config or a config value is invalid."""


class AudioError(KaraokeError, ValueError):
    """An audio file cannot be read, is empty, silent, non-finite or inconsistent with its song."""


class CorpusError(KaraokeError, ValueError):
    """A corpus folder does not have the layout it claims, or its metadata is inconsistent."""


class CheckpointError(KaraokeError, ValueError):
    """A checkpoint is missing, tampered with, unsafe to load, or from a different configuration."""


class OutputError(KaraokeError, OSError):
    """An output path cannot be written: it is a file where a folder is needed, or not writable."""


class StorageError(KaraokeError, OSError):
    """The storage of a run (a folder or an s3:// endpoint) does not answer."""
