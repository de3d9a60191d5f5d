"""A recipe's schedule scaled to this run: a term's warm-up, and the epochs of a method's own stage.

Warm-up: a distillation term's weight rises from 0 to full over the first epochs.

A recipe's warm-up belongs to its schedule: mdistiller's DKD ramps over 20 of its 240 CIFAR-100
epochs. Copied as 20 epochs into a 3-epoch run, the term would never reach full weight and nothing
would say so (issue 28). So a method's `warmup` left at null is the recipe's fraction of this run's
student epochs (`trainer.epochs`), resolved when the config is validated, so the run's params and
key hold the number of epochs used (240 epochs give the recipe's 20, and the same key as before);
a number set by the user is taken as is, and refused when it exceeds the run's epochs.

A method's own stage (FT's paraphraser, AB's and FSP's initialisation: RepDistiller's 30 epochs
beside its 240) is scaled the same way (`resolve_stage`), at least one epoch.
"""

from __future__ import annotations

from kdexp.config.checks import require


def resolve(section, key: str, epochs: int, recipe_warmup: int, recipe_epochs: int = 240) -> None:
    """Set `section.warmup` (named `key` in messages) for a run of `epochs` student epochs: null →
    round(epochs · recipe_warmup / recipe_epochs); a number → checked to lie in [0, epochs]."""
    if section.warmup is None:
        section.warmup = round(epochs * recipe_warmup / recipe_epochs)
        return
    require(isinstance(section.warmup, int) and 0 <= section.warmup <= epochs, key, section.warmup,
            f"allowed: an integer in [0, trainer.epochs={epochs}] (a longer warm-up never reaches full "
            f"weight), or null for the recipe's {recipe_warmup} of {recipe_epochs} epochs scaled to this run")


def ramp(epoch: int, warmup: int) -> float:
    """The term's weight in (1-based) `epoch`: linear to 1 at epoch `warmup`, 1 without warm-up."""
    return min(epoch / warmup, 1.0) if warmup else 1.0


def resolve_stage(section, key: str, epochs: int, recipe_stage: int, recipe_epochs: int = 240) -> None:
    """Set `section.init_epochs` (named `key` in messages): null → the recipe's `recipe_stage` of
    `recipe_epochs` scaled to this run's `epochs`, at least 1; a number → checked to be >= 1."""
    if section.init_epochs is None:
        section.init_epochs = max(1, round(epochs * recipe_stage / recipe_epochs))
        return
    require(isinstance(section.init_epochs, int) and section.init_epochs >= 1, key, section.init_epochs,
            f"allowed: an integer >= 1 (the stage's epochs), or null for the recipe's {recipe_stage} of "
            f"{recipe_epochs} epochs scaled to this run")
