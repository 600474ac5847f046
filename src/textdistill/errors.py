"""Errors that name what went wrong and what was expected."""


class TextDistillError(Exception):
    """Base class: every error the library raises on bad input or a missing resource."""


class ResourceMissing(TextDistillError):
    """A named model, vector set or data file is not installed or cached."""


class DataError(TextDistillError):
    """A task or data file is malformed: a missing column, an empty text, an unknown label..."""


class ArtifactError(TextDistillError):
    """A DistilledDataset directory is corrupt, foreign, or used with the wrong learner."""


class ConfigError(TextDistillError):
    """A method, learner or recipe was configured with values it cannot use."""


class TrainingDiverged(TextDistillError):
    """A training loss became NaN or infinite (evaluation records the run as failed and goes on)."""


class ArgumentTypeError(ConfigError, TypeError):
    """An argument of the wrong type: a TypeError, as Python's own, and a ConfigError, as every bad input here."""


def kind_of(value) -> str:
    """A value as an error message names it: its type and a short repr ("int 3", "str '2'")."""
    import reprlib

    return f"{type(value).__name__} {reprlib.repr(value)}"


class TextDistillWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as a warning line)."""
