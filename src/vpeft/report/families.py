"""How the report shows method families (`PeftMethod.category`, vpeft.methods.base.CATEGORIES):
the heading of each family in the tables and its colour in the plots, in one place.

The family of a method is the method's own class attribute; this module only names and colours the
families (it stays importable without torch, so the report does not load the method modules).
"""

from __future__ import annotations

#: Family headings of the method tables, in table order (keys are `PeftMethod.category`).
FAMILY_TITLES = {
    "baseline": "Baselines",
    "partial": "Partial tuning (selective)",
    "addition": "Addition (adapters, prompts, prefixes)",
    "reparameterization": "Reparameterization",
    "side": "Side-tuning",
    "unified": "Unified",
    "peft": "huggingface peft tuners (peft's own code)",
}

#: Plot colour of each family (Okabe-Ito: distinguishable with the common colour-vision deficiencies).
FAMILY_COLOURS = {
    "baseline": "#000000",
    "partial": "#E69F00",
    "addition": "#0072B2",
    "reparameterization": "#D55E00",
    "side": "#009E73",
    "unified": "#CC79A7",
    "peft": "#56B4E9",
}

#: Colour of a method whose family is not known (e.g. a published row of a method we do not have).
UNKNOWN_COLOUR = "#7F7F7F"


def family_title(family: str | None) -> str:
    return FAMILY_TITLES.get(family, family) if family else "other"


def family_colour(family: str | None) -> str:
    return FAMILY_COLOURS.get(family or "", UNKNOWN_COLOUR)
