"""KD-ORI: Hinton distillation on the teacher's original training data (the data-driven upper bound)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.losses import kd_loss
from harness.method import Milestones, Method, Params, ScheduleKind, make_scheduler, sgd
from harness.registry import METHODS


class KDParams(Params):
    batch_size: int = Field(256, gt=0)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    temperature: float = Field(4.0, gt=0)
    label_weight: float = Field(0.0, ge=0, le=1)  # weight of CE on true labels (0: pure soft targets)
    schedule: ScheduleKind = "none"
    milestones: Milestones = Field(default_factory=list)  # fractions of budget.iterations
    gamma: float = Field(0.1, gt=0)
    data: str | None = None  # the data source; None = the suite's own dataset


@METHODS.register("kd_ori")
class KDOri(Method):
    name = "kd_ori"
    data_free = False
    Params = KDParams
    source_split = "train"

    def data_source(self):
        return self.p.data

    @classmethod
    def training_data(cls, params, dataset):
        return params.data or dataset

    def setup(self):
        from harness.api import training_batches

        c, p = self.ctx, self.p
        self.batches = training_batches(c, self.data_source(), p.batch_size)
        self.samplers["data"] = self.batches
        self.opt = sgd(c.student.parameters(), p.lr, p.momentum, p.weight_decay, c.device)
        self.optimizers["student"] = self.opt
        self.schedulers["student"] = make_scheduler(self.opt, p.schedule, c.iterations, p.milestones, p.gamma)
        c.student.train()
        self.teacher_images, self.batch_images = 0, 0  # images through the teacher (`count`), as the data-free methods

    def step(self, it):
        c = self.ctx
        x, y = next(self.batches)
        self.batch_images = x.shape[0]  # a small own dataset may give smaller batches
        x = c.prepare(x)
        with torch.no_grad(), c.autocast():
            t = c.teacher(x)
        with c.autocast():
            s = c.student(x)
            loss = kd_loss(s, t, self.p.temperature)
            if self.p.label_weight > 0:
                loss = (1 - self.p.label_weight) * loss + self.p.label_weight * F.cross_entropy(s.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss_S": loss.detach()}

    def count(self):
        self.teacher_images += self.batch_images

    def sample(self, n):
        return None
