"""Errors shown to the user: each message says what went wrong, who caused it, and what to do."""

from __future__ import annotations


class RsPluginError(Exception):
    """Base class for errors that the CLI prints as a one-line message instead of a traceback."""


class UnknownComponentError(RsPluginError, KeyError):
    """No component of that kind has that name."""

    __str__ = Exception.__str__  # KeyError would quote the whole message


class ComponentConflictError(RsPluginError):
    """Two plugins contribute a component of the same kind and name."""


class IncompatibleComponentsError(RsPluginError):
    """Components that cannot work together, found when the run is composed."""


class PluginBuildError(RsPluginError):
    """A plugin's factory raised while building a component."""


class MissingDependencyError(RsPluginError, ImportError):
    """A component or source needs a package that is not installed; the message has the pip command."""


class SourceError(RsPluginError, ValueError):
    """A model or data source cannot be resolved or loaded."""


class ResultsFileError(RsPluginError, ValueError):
    """A results file that cannot be read, or cannot be resumed by this run (other columns or settings)."""


class TrainingDivergedError(RsPluginError):
    """The training loss became NaN or infinite; the checkpoint of the last finite epoch is kept."""


class NeedsFreshSamplesError(RsPluginError):
    """A certifier cannot certify from stored counts (``recertify``): it needs fresh samples; the message says why."""
