"""Typed exceptions. The CLI turns every DDiTError into a one-line message and exit code 2."""


class DDiTError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(DDiTError, ValueError):
    """A setting is out of range or inconsistent (tau, eps, warm-up, shape, schedule)."""


class ModelNotFoundError(DDiTError, LookupError):
    """Unknown model name."""


class WeightsError(DDiTError, FileNotFoundError):
    """A weights folder or file is missing, incomplete or corrupt."""


class VocabularyError(DDiTError, ValueError):
    """A prompt uses words the model's text encoder does not know."""


class BundleError(DDiTError):
    """A bundle is missing a file, fails a hash, or has an unknown format version."""
