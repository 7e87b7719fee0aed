"""DFAD (Fang et al. 2019): a generator searches for inputs where student and teacher disagree most.

Per iteration: k imitation steps (fresh noise, x = G(z) detached, student minimises D(S(x), T(x)))
then one generation step (fresh noise, generator minimises -D, or -log(D+1) for L_GEN-ADA).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from harness.losses import DISCREPANCIES, GENERATOR_OBJECTIVES
from harness.method import GeneratorMethod, Milestones, Params, ScheduleKind, adam, make_scheduler, sgd
from harness.registry import METHODS


class DFADParams(Params):
    batch_size: int = Field(256, gt=0)
    nz: int = Field(256, gt=0)
    ngf: int = Field(64, gt=0)
    generator: str = "generator_a"
    k: int = Field(5, gt=0)  # imitation steps per generator step
    lr_S: float = Field(0.1, gt=0)
    lr_G: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    loss: Literal["mae", "mse", "kld"] = "mae"  # the discrepancy, used by both stages
    gen_objective: Literal["neg", "ada"] = "neg"
    schedule: ScheduleKind = "none"  # applied to both optimisers, as in the official scripts
    milestones: Milestones = Field(default_factory=list)  # fractions of budget.iterations
    gamma: float = Field(0.1, gt=0)


AdversarialMethod = GeneratorMethod  # its name before 2026-12-01, for method files that import it from here


@METHODS.register("dfad")
class DFAD(GeneratorMethod):
    name = "dfad"
    Params = DFADParams

    def setup(self):
        c, p = self.ctx, self.p
        self.build_generator()
        self.opt_S = sgd(c.student.parameters(), p.lr_S, p.momentum, p.weight_decay, c.device)
        self.opt_G = adam(self.generator.parameters(), p.lr_G, device=c.device)
        self.optimizers.update(student=self.opt_S, generator=self.opt_G)
        for name, opt in self.optimizers.items():
            self.schedulers[name] = make_scheduler(opt, p.schedule, c.iterations, p.milestones, p.gamma)
        self.discrepancy = DISCREPANCIES.get(p.loss)
        self.objective = GENERATOR_OBJECTIVES.get(p.gen_objective)
        c.student.train()
        self.generator.train()
        self.teacher_images = 0  # images through the teacher (`count`): the runner records it for equal-cost reading

    @property
    def graphable(self) -> bool:  # a float lr is captured with the step: recapturing every iteration gains nothing
        return self.p.schedule != "cosine"

    def step(self, it):
        c, S, T, G = self.ctx, self.ctx.student, self.ctx.teacher, self.generator
        for _ in range(self.p.k):
            with c.no_grad_if_fast(), c.autocast():  # the teacher's graph is never needed here
                x = c.prepare(G(self.noise())).detach()
                t = T(x).detach()
            with c.autocast():
                loss_S = self.discrepancy(S(x), t)
            self.opt_S.zero_grad(set_to_none=True)
            loss_S.backward()
            self.opt_S.step()

        with c.autocast():
            loss_G = self.generator_loss(c.prepare(G(self.noise())))
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        return {"loss_S": loss_S.detach(), "loss_G": loss_G.detach()}

    def count(self):
        self.teacher_images += (self.p.k + 1) * self.p.batch_size

    def generator_loss(self, x):
        """The generator's loss on x = G(z); a subclass adds its prior here (DFQ-style: BN statistics)."""
        d = self.discrepancy(self.ctx.student(x), self.ctx.teacher(x))  # T is frozen: gradients flow to x only
        return self.objective(d)
