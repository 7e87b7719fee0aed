"""RANDOM (the paper's data-free floor): the student imitates the teacher on random inputs.

Same budget, student optimiser and discrepancy as DFAD, but the inputs are never searched for: samples
of an untrained generator that is never updated (`source: generator`, default: Table 2's "inputs from a
fixed, untrained generator"), or Gaussian noise images (`source: noise`). No generation stage.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from harness.registry import METHODS
from methods.dfad import DFAD, DFADParams


class RandomParams(DFADParams):
    source: Literal["noise", "generator"] = "generator"


@METHODS.register("random")
class Random(DFAD):
    """DFAD's setup (student optimiser, discrepancy, generator) without the generator's training."""

    name = "random"
    Params = RandomParams
    graphable = False

    def setup(self):
        super().setup()
        # Nothing ever trains the generator: no optimiser, no schedule for it.
        del self.optimizers["generator"], self.schedulers["generator"]
        self.opt_G = None
        self.teacher_images = 0  # images through the teacher (the runner records it for equal-cost reading)
        if self.p.source == "noise":
            del self.modules["generator"]
            self.generator = None
        else:
            # Train mode keeps BN normalising each batch (as in DFAD); momentum 0 freezes the running
            # statistics too, so the generator's whole state stays as initialised.
            for m in self.generator.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = 0.0
            self.generator.requires_grad_(False)

    def inputs(self) -> torch.Tensor:
        if self.generator is None:
            return torch.randn(self.p.batch_size, *self.ctx.input_shape, device=self.ctx.device)
        return self.generator(self.noise())

    def step(self, it):
        c, S, T = self.ctx, self.ctx.student, self.ctx.teacher
        for _ in range(self.p.k):
            with torch.no_grad(), c.autocast():
                x = c.prepare(self.inputs())
                t = T(x)
            with c.autocast():
                loss_S = self.discrepancy(S(x), t)
            self.opt_S.zero_grad(set_to_none=True)
            loss_S.backward()
            self.opt_S.step()
        return {"loss_S": loss_S.detach()}

    def count(self):
        self.teacher_images += self.p.k * self.p.batch_size

    @torch.no_grad()
    def sample(self, n):
        if self.generator is None:
            return torch.randn(n, *self.ctx.input_shape, device=self.ctx.device)
        return self.generator(torch.randn(n, self.p.nz, device=self.ctx.device))
