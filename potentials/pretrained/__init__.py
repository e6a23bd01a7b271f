"""Bundled pretrained models, resolved by name through the ``mlmd.pretrained`` entry points."""

from importlib.resources import files
from pathlib import Path


def bamboo_electrolyte() -> Path:
    """BAMBOO-style potential for liquid electrolytes (H Li B C N O F P S), trained on GFN2-xTB clusters."""
    return Path(str(files(__name__).joinpath("bamboo-electrolyte", "model.pt")))


def bamboo_electrolyte_aligned() -> Path:
    """``bamboo-electrolyte`` with its energy head aligned to experimental liquid densities (``mlmd align``)."""
    return Path(str(files(__name__).joinpath("bamboo-electrolyte-aligned", "model.pt")))


def bamboo_carbon() -> Path:
    """BAMBOO-style potential for carbon crystals (no Coulomb term), trained on GFN1-xTB labels of carbon_24 supercells."""
    return Path(str(files(__name__).joinpath("bamboo-carbon", "model.pt")))
