"""User-facing errors. Each message is one line naming the bad value and what is accepted."""


class MLMDError(Exception):
    """Base class for mistakes in user input; the CLI prints the message and exits with code 2."""


class InputError(MLMDError):
    """Malformed or physically impossible input (structures, files, settings)."""


class UnknownElementError(InputError):
    """A structure holds an element the model was not trained on."""


class ConfigError(MLMDError):
    """A configuration file or option is invalid."""


class CheckpointError(MLMDError):
    """A model file is corrupt, foreign or incompatible."""


class SimulationError(MLMDError):
    """A simulation guard tripped (NaN, atoms too close, temperature runaway)."""
