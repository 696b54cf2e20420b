"""Typed errors. Every failure a user can cause is an EmberError subclass."""

from __future__ import annotations


class EmberError(Exception):
    """Base class of every error Ember raises on purpose."""


class InvalidRequestError(EmberError, ValueError):
    """The request (prompt, parameter) is not valid for this model.

    Attributes:
        param: the name of the offending field, when there is one.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFoundError(EmberError, FileNotFoundError):
    """The model name or folder does not resolve to a loadable model."""


class UnsupportedModelError(EmberError):
    """The model folder is readable but its architecture or format is not supported."""


class CorruptModelError(UnsupportedModelError):
    """A model file is damaged (truncated, not the format it claims) or does not match config.json;
    the message names the file."""


class OverloadedError(EmberError):
    """The engine's queue is full; retry later."""


class BatchFailedError(EmberError, RuntimeError):
    """The batch a request ran in raised; that batch's requests fail, the engine keeps serving."""


class EngineDeadError(EmberError, RuntimeError):
    """The engine failed while running and cannot serve further requests."""


class OutOfMemoryBudgetError(EmberError, MemoryError):
    """The configured memory budget is too small for the model."""
