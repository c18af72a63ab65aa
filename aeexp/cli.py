"""What the command-line entry points share: which errors are the user's to fix."""

from __future__ import annotations

from aeexp.config import ConfigError
from aeexp.data.datasets import DataNotFoundError
from aeexp.registry import RegistryError
from aeexp.training.files import CheckpointError

# Raised for bad input; entry points print these as one line instead of a traceback.
USER_ERRORS = (ConfigError, RegistryError, DataNotFoundError, CheckpointError, FloatingPointError)
