"""Bundled pretrained models, resolved by name through the ``mlmd.pretrained`` entry points."""

from importlib.resources import files
from pathlib import Path


def bamboo_electrolyte() -> Path:
    """BAMBOO-style potential for liquid electrolytes (H Li B C N O F P S), trained on GFN2-xTB clusters."""
    return Path(str(files(__name__).joinpath("bamboo-electrolyte", "model.pt")))
