"""Names for the types the package's signatures share."""

from typing import Any, Callable

from ml_collections import ConfigDict

Config = ConfigDict  # a run's config (config.base_config) or one of its sections (config.loss, ...)
Log = Callable[[str], None]  # where a function reports progress: print, or programs.common.log
PyTree = Any  # nested dicts / lists / dataclasses of arrays: parameters, a train state
