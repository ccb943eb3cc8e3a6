"""Errors a user can cause. Each names the setting, or the file and line, at fault."""


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""


class ConfigError(HarnessError):
    """A config value is impossible or unsupported here; the message names the setting."""


class DataError(HarnessError):
    """A dataset file is missing or malformed; the message names the file and line."""


class TrainingError(HarnessError):
    """Training went wrong in a way that would otherwise pass silently (zero grads, NaN)."""
