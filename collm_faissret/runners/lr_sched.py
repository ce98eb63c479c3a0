"""Learning-rate schedules, registered under ``lr_scheduler``; stateless functions of the step."""
import math

from ..registry import register


@register("lr_scheduler", "linear_warmup_cosine_lr")
class LinearWarmupCosineLR:
    """Linear warmup from warmup_lr to init_lr over warmup_steps optimizer steps, then
    cosine decay from init_lr to min_lr until total_steps."""

    def __init__(self, optimizer, total_steps: int, init_lr: float, min_lr: float, warmup_lr: float,
                 warmup_steps: int):
        self.optimizer = optimizer
        self.total_steps = max(total_steps, 1)
        self.init_lr, self.min_lr, self.warmup_lr = init_lr, min_lr, warmup_lr
        self.warmup_steps = warmup_steps

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * step / max(self.warmup_steps, 1)
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_lr + 0.5 * (self.init_lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def step(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr


@register("lr_scheduler", "constant_lr")
class ConstantLR(LinearWarmupCosineLR):
    """init_lr throughout (after an optional linear warmup)."""

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return super().lr_at(step)
        return self.init_lr
