"""Staged unfreezing: which parameter groups train at each step, as ``train.stages`` declares.

Groups come from the model (:meth:`CaptionModel.parameter_groups`) plus ``all``. A frozen parameter has
``requires_grad`` off, gets no gradient, and AdamW leaves it (and its weight decay) alone. A family whose frozen
parts must not change in training mode (batch norm statistics: ``cnn-lstm``) keeps them in eval mode in its
``train``, which :meth:`Stages.apply` calls after every change.
"""

from __future__ import annotations

from collections.abc import Sequence

from captionkit.config import StageSection
from captionkit.errors import ConfigError
from captionkit.models.base import CaptionModel

ALL = "all"


class Stages:
    def __init__(self, model: CaptionModel, stages: Sequence[StageSection]) -> None:
        self.model = model
        self.stages = list(stages)
        self.groups = model.parameter_groups()
        known = [ALL, *self.groups]
        for index, stage in enumerate(self.stages):
            for name in stage.train:
                if name not in known:
                    raise ConfigError(
                        f"train.stages[{index}].train",
                        f"unknown parameter group {name!r} for {model.family} (known: {', '.join(known)})",
                    )
        # That the last stage has no until_step (index_at keeps it to the end) is checked as the recipe is read
        # (captionkit.config).
        self.current: int | None = None

    def index_at(self, step: int) -> int | None:
        """The stage that step ``step`` (0-based) belongs to; None when no stages are declared."""
        for index, stage in enumerate(self.stages):
            if stage.until_step is None or step < stage.until_step:
                return index
        return len(self.stages) - 1 if self.stages else None

    def trained_names(self, index: int | None) -> set[str] | None:
        """Names of the parameters stage ``index`` trains; None: all of them."""
        if index is None or ALL in self.stages[index].train:
            return None
        return {name for group in self.stages[index].train for name in self.groups[group]}

    def apply(self, step: int) -> bool:
        """Set ``requires_grad`` for the stage of ``step``; True when this changed the stage.

        Without stages nothing is touched: a family's own freezing (e.g. ``freeze_encoder``) stands.
        """
        index = self.index_at(step)
        if index is None or index == self.current:
            return False
        self.current = index
        trained = self.trained_names(index)
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(trained is None or name in trained)
        # The model's own ``train`` keeps frozen parts in eval mode (batch norms keep their running statistics):
        # asked again now that the frozen set changed.
        self.model.train(self.model.training)
        return True

    def encoder_always_frozen(self) -> bool:
        """True when no stage trains a parameter that ``encode`` uses, or, without stages, when they are all frozen
        already: then ``encode`` outputs can be cached."""
        encoding = set(self.model.encode_parameter_names())
        if not encoding:
            return False
        if not self.stages:
            parameters = dict(self.model.named_parameters())
            return not any(parameters[name].requires_grad for name in encoding)
        for index in range(len(self.stages)):
            trained = self.trained_names(index)
            if trained is None or trained & encoding:
                return False
        return True
