"""The learning-rate schedule as the engine sees it: one adapter over a timm scheduler.

The engine tells the schedule two things, always: an optimizer update was made (``on_update``) and an
epoch ended (``on_epoch_end``). The timm scheduler's own ``t_in_epochs`` decides which of the two moves
the learning rate (timm's train.py calls both too), so a recipe chooses its schedule in one place, when
it builds it, and the engine has no per-recipe switch:

- per epoch (DeiT, LV-ViT): ``step(epoch + epoch_offset)`` after each epoch; DeiT's main.py steps with
  the finished epoch (offset 0), timm's train.py with the next one (offset 1);
- per update (EfficientTrain): ``step_update(position)`` after each update, where the position is the
  update count of a run that had made ``updates_per_epoch`` updates in every epoch before this one, so it
  stays right when stages (or a retry with half the batch) make a different number of updates per epoch.
"""

from __future__ import annotations


class LRSchedule:
    """A timm scheduler driven by the engine's updates and epochs.

    Args:
        scheduler: a timm scheduler (``timm.scheduler.Scheduler``).
        epoch_offset: added to the finished epoch in ``scheduler.step`` (see above).
        updates_per_epoch: for a per-update schedule: updates in one epoch of the schedule (positions
            are counted in these); None for a per-epoch schedule.
        epochs: length of the schedule in epochs (with cool-down), when the recipe takes it from there.
    """

    def __init__(
        self, scheduler, epoch_offset: int = 0, updates_per_epoch: int | None = None, epochs: int | None = None
    ) -> None:
        self.scheduler = scheduler
        self.epoch_offset = epoch_offset
        self.updates_per_epoch = updates_per_epoch
        self.epochs = epochs
        self.origin = 0  # schedule position minus the update count

    @property
    def per_update(self) -> bool:
        return self.updates_per_epoch is not None

    def start(self, epoch: int, num_updates: int, done_in_epoch: int = 0) -> None:
        """Training (re)starts at ``epoch`` with ``done_in_epoch`` of its updates already made (a mid-epoch
        checkpoint) and ``num_updates`` updates made so far: place a per-update schedule there."""
        if self.updates_per_epoch is None:  # not per_update
            return
        position = epoch * self.updates_per_epoch + done_in_epoch
        self.origin = position - num_updates
        self.scheduler.step_update(position)

    def place_at(self, epoch: int) -> None:
        """Set a per-epoch schedule's learning rate for ``epoch`` from its own settings, not a saved state
        (timm's train.py on every resume; here when a resume changes the flags on purpose). A per-update
        schedule is placed by :meth:`start` anyway."""
        if not self.per_update and epoch > 0:
            self.scheduler.step(epoch - 1 + self.epoch_offset)

    def on_update(self, num_updates: int) -> None:
        """After the optimizer update number ``num_updates`` (counted from the start of training)."""
        self.scheduler.step_update(self.origin + num_updates)

    def on_epoch_end(self, epoch: int) -> None:
        """After ``epoch`` finished training."""
        self.scheduler.step(epoch + self.epoch_offset)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        """Restore a per-epoch schedule; a per-update one is placed by :meth:`start` from the update count
        (its saved state may come from a stage with another number of updates per epoch)."""
        if state and not self.per_update:
            self.scheduler.load_state_dict(state)
