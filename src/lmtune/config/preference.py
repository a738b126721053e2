"""The `preference:` section (TRL's DPO family, ORPO, SimPO, CPO, KTO), apart so schema.py stays small."""

from typing import Literal

from pydantic import Field

from lmtune.config.section import Section

PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo", "cpo", "kto")


class PreferenceSection(Section):
    loss: Literal[PREFERENCE_LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid",
        description="Preference objective (TRL). sigmoid (DPO), ipo, hinge: pairwise against a reference "
        "model (with LoRA: the base with the adapter switched off, no second copy); orpo, simpo, cpo: "
        "reference-free; kto: single answers labelled good or bad.",
    )
    beta: float = Field(
        0.1, gt=0, description="Strength of the preference term (DPO/IPO/hinge/KTO beta; ORPO lambda)."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="sigmoid: assumed probability that a pair's labels are flipped (cDPO)."
    )
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin gamma.")
    sft_weight: float = Field(
        0.0,
        ge=0,
        description="Weight of an SFT (negative log-likelihood) loss on the chosen answers mixed into the "
        "preference loss (RPO for DPO losses, cpo_alpha for cpo/simpo). 0: none.",
    )
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the good answers' loss.")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the bad answers' loss.")
    max_prompt_length: int | None = Field(
        None, ge=1, description="Prompts longer than this many tokens are cut from the left; null: no limit."
    )
