"""Reference-data labelling: electrolyte species, packmol clusters, sampling, GFN2-xTB labels (``mlmd label``)."""

from .config import LabelConfig, SamplingConfig, build_config, load_config
from .label import run_label
from .species import Species, resolve_salt, resolve_species

__all__ = ["LabelConfig", "SamplingConfig", "Species", "build_config", "load_config", "resolve_salt",
           "resolve_species", "run_label"]
