"""DAFL (Chen et al., ICCV 2019), as in its official DAFL-train.py.

Every iteration, one batch x = G(z) serves both networks:
  loss_G = w_oh * CE(T(x), argmax T(x)) + w_ie * sum_c p_c log10 p_c + w_a * (-mean |f_T(x)|)
           (p = batch-mean softmax of T; f_T = T's penultimate features, from the same forward pass)
  loss_S = KL(softmax T(x) || softmax S(x)) on x detached (temperature 1, batch mean)
and both optimisers step. MNIST: Adam for both; CIFAR: SGD for S with step decay, Adam for G.
"""
from __future__ import annotations

import inspect
import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from harness.errors import HarnessError
from harness.losses import kld
from harness.method import GeneratorMethod, Milestones, Params, ScheduleKind, adam, make_scheduler, sgd
from harness.registry import METHODS


class DAFLParams(Params):
    batch_size: int = Field(512, gt=0)  # DAFL's MNIST default (the DFAD paper re-ran it at 256)
    nz: int = Field(100, gt=0)
    ngf: int = Field(64, gt=0)  # 128/64 channels, as DAFL's
    generator: str = "generator_dafl"  # GeneratorA with DAFL's BatchNorm eps 0.8 (harness/models.py)
    lr_G: float = Field(0.2, gt=0)
    lr_S: float = Field(2e-3, gt=0)
    optimizer_S: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD only
    weight_decay: float = Field(0.0, ge=0)  # student only, as in the official script
    w_oh: float = Field(1.0, ge=0)
    w_ie: float = Field(5.0, ge=0)
    w_a: float = Field(0.1, ge=0)
    schedule: ScheduleKind = "none"  # student only: the official script never decays lr_G
    milestones: Milestones = Field(default_factory=list)  # fractions of budget.iterations
    gamma: float = Field(0.1, gt=0)


def dafl_generator_terms(t_logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three generator terms, in float32 (bf16 logits saturate the softmax).

    Dense (N, K, H, W) logits are scored per pixel: the batch mean then runs over all N*H*W pixels.
    The batch-mean probability is formed in log space (logsumexp of log-softmax) so that a class no
    sample predicts gives 0 * finite, not 0 * log 0 = NaN. log10, as in the official code.
    """
    t = t_logits.float()
    if t.dim() > 2:  # segmentation: every pixel is a sample for the one-hot and the class-balance terms
        t = t.movedim(1, -1).reshape(-1, t.shape[1])
    oh = F.cross_entropy(t, t.argmax(1))
    log_p = torch.logsumexp(F.log_softmax(t, 1), 0) - math.log(t.shape[0])
    ie = (log_p.exp() * log_p).sum() / math.log(10)
    a = -features.float().abs().mean()
    return {"oh": oh, "ie": ie, "a": a}


def penultimate_source(teacher: nn.Module) -> nn.Module | None:
    """None when the teacher's forward takes return_features (the harness's models); else its last nn.Linear,
    whose input DAFL's activation term reads. Neither is a one-line error before training."""
    try:
        takes = "return_features" in inspect.signature(teacher.forward).parameters
    except (TypeError, ValueError):  # e.g. TorchScript
        takes = False
    if takes:
        return None
    linears = [m for m in teacher.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise HarnessError("dafl needs the teacher's penultimate features: a forward(x, return_features=True) "
                           "giving (logits, {'penultimate': ...}), or an nn.Linear last layer to read them from")
    return linears[-1]


@METHODS.register("dafl")
class DAFL(GeneratorMethod):
    name = "dafl"
    Params = DAFLParams
    version = 2  # 2: LeNet-5's features are the 120 entering its classifier (were the 84 after fc1)

    def setup(self):
        c, p = self.ctx, self.p
        self.build_generator()
        if p.optimizer_S == "adam":
            self.opt_S = adam(c.student.parameters(), p.lr_S, weight_decay=p.weight_decay, device=c.device)
        else:
            self.opt_S = sgd(c.student.parameters(), p.lr_S, p.momentum, p.weight_decay, c.device)
        self.opt_G = adam(self.generator.parameters(), p.lr_G, device=c.device)
        self.optimizers.update(student=self.opt_S, generator=self.opt_G)
        self.schedulers["student"] = make_scheduler(self.opt_S, p.schedule, c.iterations, p.milestones, p.gamma)
        c.student.train()
        self.generator.train()
        self.teacher_images = 0  # images through the teacher (the runner records it for equal-cost reading)
        self.feature_layer = penultimate_source(c.teacher)

    def teacher_forward(self, x):
        """The teacher's logits and penultimate features in one forward: the harness's models return them
        (return_features=True); any other teacher's are the input of its last nn.Linear, read by a hook."""
        T = self.ctx.teacher
        if self.feature_layer is None:
            t, feats = T(x, return_features=True)
            return t, feats["penultimate"]
        seen = []
        handle = self.feature_layer.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
        try:
            t = T(x)
        finally:
            handle.remove()
        return t, seen[-1].flatten(1)

    def step(self, it):
        c, p, S = self.ctx, self.p, self.ctx.student
        with c.autocast():
            x = c.prepare(self.generator(self.noise()))
            t, feats = self.teacher_forward(x)  # T frozen: gradients reach G through x only
        terms = dafl_generator_terms(t, feats)
        loss_G = p.w_oh * terms["oh"] + p.w_ie * terms["ie"] + p.w_a * terms["a"]
        with c.autocast():
            s = S(x.detach())
        loss_S = kld(s, t.detach())  # float32 inside; = the official kdloss (KL, temperature 1)
        self.opt_G.zero_grad(set_to_none=True)
        self.opt_S.zero_grad(set_to_none=True)
        (loss_G + loss_S).backward()  # disjoint graphs: one backward, as in the official code
        self.opt_G.step()
        self.opt_S.step()
        return {"loss_S": loss_S.detach(), "loss_G": loss_G.detach(), "loss_oh": terms["oh"].detach(),
                "loss_ie": terms["ie"].detach(), "loss_a": terms["a"].detach()}

    def count(self):
        self.teacher_images += self.p.batch_size
