"""ZSKT (Micaelli & Storkey 2019, "Zero-shot Knowledge Transfer via Adversarial Belief Matching").

Per iteration (one pseudo-batch, as the official solver.py): the generator takes 1 step maximising
KL(softmax T || softmax S) on x = G(z); then x = G(z) is regenerated with the updated generator (same z),
the teacher runs once on it, and the student takes n_s steps on that batch minimising the same KL plus
beta * attention transfer over the residual stages. Adam for both, cosine annealing, grad norms clipped.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.errors import HarnessError
from harness.losses import kld
from harness.method import GeneratorMethod, Params, ScheduleKind, adam, make_scheduler
from harness.registry import METHODS


def attention_map(a: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W): channel mean of squared activations, L2-normalised per sample."""
    return F.normalize(a.float().pow(2).mean(1).flatten(1), dim=1)


def at_loss(s_stages, t_stages) -> torch.Tensor:
    """Sum over stages of mean((a_S - a_T)^2); channel-free, so widths may differ (official attention_diff)."""
    return sum((attention_map(s) - attention_map(t)).pow(2).mean() for s, t in zip(s_stages, t_stages))


class ZSKTParams(Params):
    # Defaults: the official CIFAR-10 scripts (dfad-paper.md, "ZSKT's official recipe").
    batch_size: int = Field(128, gt=0)
    nz: int = Field(100, gt=0)
    ngf: int = Field(64, gt=0)
    generator: str = "generator_a"  # DFAD's generator, so the two differ only in the game
    n_s: int = Field(10, gt=0)  # student steps per pseudo-batch (after 1 generator step)
    lr_S: float = Field(2e-3, gt=0)
    lr_G: float = Field(1e-3, gt=0)
    beta: float = Field(250.0, ge=0)  # attention-transfer weight; 0 turns it off
    # The official F.kl_div(...) uses PyTorch's default 'mean' reduction: KL / num_classes. beta = 250
    # was tuned against that scale, so it is the default; "batchmean" gives the textbook KL.
    kl_reduction: Literal["mean", "batchmean"] = "mean"
    clip: float = Field(5.0, gt=0)  # gradient-norm clipping, both networks
    schedule: ScheduleKind = "cosine"  # both optimisers, over the budget's iterations (= pseudo-batches)


@METHODS.register("zskt")
class ZSKT(GeneratorMethod):
    name = "zskt"
    Params = ZSKTParams

    def setup(self):
        c, p = self.ctx, self.p
        self.build_generator()
        self.opt_S = adam(c.student.parameters(), p.lr_S, device=c.device)
        self.opt_G = adam(self.generator.parameters(), p.lr_G, device=c.device)
        self.optimizers.update(student=self.opt_S, generator=self.opt_G)
        for name, opt in self.optimizers.items():
            self.schedulers[name] = make_scheduler(opt, p.schedule, c.iterations)
        self.kl_scale = 1.0 / c.num_classes if p.kl_reduction == "mean" else 1.0
        self.use_at = p.beta > 0 and self.stage_count() > 0
        c.student.train()
        self.generator.train()
        self.teacher_images = 0

    @torch.no_grad()
    def stage_count(self) -> int:
        """Stages both models expose (0: no residual stages, e.g. LeNet, so AT is off); a one-line error
        when they cannot be paired. Probed once in eval mode so the student's BN statistics stay as they are."""
        c, x = self.ctx, torch.zeros(1, *self.ctx.input_shape, device=self.ctx.device)
        shapes = []
        for who, model in (("teacher", c.teacher), ("student", c.student)):
            was = model.training
            model.eval()
            try:
                _, feats = model(c.prepare(x), return_features=True)
            except TypeError:
                raise HarnessError(f"zskt: the {who} does not take return_features=True; set beta: 0") from None
            finally:
                model.train(was)
            shapes.append([tuple(s.shape[-2:]) for s in feats["stages"]])
        t, s = shapes
        if len(t) != len(s):
            raise HarnessError(f"zskt: teacher has {len(t)} residual stages, student {len(s)}; "
                               "attention transfer pairs them one to one (set beta: 0 to run without it)")
        if t != s:
            raise HarnessError(f"zskt: stage sizes differ (teacher {t}, student {s}); attention maps must match")
        return len(t)

    def kl(self, s_logits, t_logits):
        return kld(s_logits, t_logits) * self.kl_scale

    def step(self, it):
        c, S, T, G, p = self.ctx, self.ctx.student, self.ctx.teacher, self.generator, self.p
        z = self.noise()
        with c.autocast():  # generator step: maximise the disagreement
            x = c.prepare(G(z))
            loss_G = -self.kl(S(x), T(x))
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward(inputs=list(G.parameters()))  # the student's gradients are not needed here
        torch.nn.utils.clip_grad_norm_(G.parameters(), p.clip)
        self.opt_G.step()

        # The official loader re-runs the updated generator on the same z for the student steps.
        with torch.no_grad(), c.autocast():
            x = c.prepare(G(z))
            t_logits, t_feats = T(x, return_features=True)

        for _ in range(p.n_s):
            with c.autocast():
                s_logits, s_feats = S(x, return_features=True)
                loss_kl = self.kl(s_logits, t_logits)
                loss_at = (at_loss(s_feats["stages"], t_feats["stages"]) if self.use_at
                           else torch.zeros((), device=c.device))
                loss_S = loss_kl + p.beta * loss_at
            self.opt_S.zero_grad(set_to_none=True)
            loss_S.backward()
            torch.nn.utils.clip_grad_norm_(S.parameters(), p.clip)
            self.opt_S.step()
        return {"loss_S": loss_S.detach(), "loss_G": loss_G.detach(), "loss_kl": loss_kl.detach(),
                "loss_at": loss_at.detach()}

    def count(self):
        self.teacher_images += 2 * self.p.batch_size
