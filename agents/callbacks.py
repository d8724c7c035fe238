"""Callbacks of the REINFORCE loop: progress bar, metrics CSV, TensorBoard, checkpoints in the run folder."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from agents.reinforce import Callback, ReinforceTrainer, UpdateStats
from agents.runs import MetricsCSV, RunFolder


class ProgressBar(Callback):
    """A tqdm bar over updates, showing reward, accuracy and blocks (or path share) of the sampled actions."""

    def __init__(self, disable: bool = False) -> None:
        self.disable = disable
        self.bar: Any = None

    def on_start(self, trainer: ReinforceTrainer) -> None:
        self.bar = tqdm(total=trainer.total_updates, initial=trainer.updates_done, unit="upd", disable=self.disable,
                        desc="reinforce")

    def on_update(self, trainer: ReinforceTrainer, stats: UpdateStats) -> None:
        used = (f"{stats.usage * trainer.num_blocks:.1f}/{trainer.num_blocks}" if trainer.is_mask
                else f"{stats.usage:.2f}")
        self.bar.set_postfix(stage=stats.stage, reward=f"{stats.reward:+.3f}", acc=f"{stats.accuracy:.3f}",
                             greedy_acc=f"{stats.accuracy_greedy:.3f}", used=used, refresh=False)
        self.bar.update(1)

    def on_end(self, trainer: ReinforceTrainer, interrupted: bool) -> None:
        self.bar.close()


class CSVLogger(Callback):
    """One row per update in ``metrics.csv`` (appended to on resume)."""

    def __init__(self, run: RunFolder) -> None:
        self.log = MetricsCSV(run.path / "metrics.csv")

    def on_update(self, trainer: ReinforceTrainer, stats: UpdateStats) -> None:
        self.log.write(stats.as_row())

    def on_end(self, trainer: ReinforceTrainer, interrupted: bool) -> None:
        self.log.close()


class TensorBoardLogger(Callback):
    """Every update's statistics as TensorBoard scalars under ``tb/`` (``tensorboard --logdir runs``)."""

    def __init__(self, run: RunFolder) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run.path / "tb"))

    def on_update(self, trainer: ReinforceTrainer, stats: UpdateStats) -> None:
        for key, value in stats.as_row().items():
            if key not in ("update", "episodes"):
                self.writer.add_scalar(f"train/{key}", value, stats.update)

    def on_end(self, trainer: ReinforceTrainer, interrupted: bool) -> None:
        self.writer.close()


class Checkpointer(Callback):
    """Saves the policy, the resume state and ``run.json`` every ``every`` updates and at the end (Ctrl-C too)."""

    def __init__(self, run: RunFolder, every: int) -> None:
        self.run, self.every = run, every

    def save(self, trainer: ReinforceTrainer, status: str) -> None:
        self.run.save_policy(trainer.net.state_dict())
        self.run.save_checkpoint(trainer.state())
        self.run.write_meta(status=status, progress={"updates": trainer.updates_done, "of": trainer.total_updates})

    def on_update(self, trainer: ReinforceTrainer, stats: UpdateStats) -> None:
        if stats.update % self.every == 0:
            self.save(trainer, "running")

    def on_end(self, trainer: ReinforceTrainer, interrupted: bool) -> None:
        self.save(trainer, "interrupted" if interrupted else "trained")
