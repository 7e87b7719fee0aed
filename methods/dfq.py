"""DFQ-style: DFAD's adversarial game plus a BatchNorm-statistics prior in the generator's loss.

For every BatchNorm layer of the teacher, the batch mean and (biased) variance of its input on the
generated images are pulled towards the running statistics it stored in training (the distance of
DeepInversion's feature hook, which the CMI authors' DFQ reimplementation uses):
    loss_bn = sum_layers ||mu_batch - running_mean||_2 + ||var_batch - running_var||_2
loss_G = DFAD's objective + bn_weight * loss_bn. Imitation steps are DFAD's, unchanged.

"-style": the reference's one-line description of DFQ (a BN-statistics term added to DFAD's generator), so
that only that term differs from DFAD. The published DFQ (Choi et al. 2020, as the CMI authors run it) also
has one-hot and class-balance terms in the generator's loss, a KL adversarial term and 10 student steps per
generator step; its published accuracy is therefore not this method's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from pydantic import Field

from harness.errors import NotApplicableError
from harness.registry import METHODS

from .dfad import DFAD, DFADParams


def bn_stat_distance(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """Distance between the batch statistics of a BN layer's input x (N, C, ...) and its running ones."""
    x = x.float().transpose(0, 1).flatten(1)  # (C, everything else)
    mean, var = x.mean(1), x.var(1, unbiased=False)
    return torch.linalg.vector_norm(mean - bn.running_mean) + torch.linalg.vector_norm(var - bn.running_var)


class DFQParams(DFADParams):
    bn_weight: float = Field(1.0, ge=0)  # weight of the BN-statistics term in the generator's loss


@METHODS.register("dfq")
class DFQ(DFAD):
    name = "dfq"
    Params = DFQParams
    needs_teacher_bn = True  # its prior hooks the teacher's BatchNorm layers

    def setup(self):
        self.bns = [m for m in self.ctx.teacher.modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if not self.bns:  # before building anything: the run is recorded unavailable (n/a in tables)
            if isinstance(self.ctx.teacher, torch.jit.ScriptModule):
                raise NotApplicableError("teacher is TorchScript, whose BatchNorm layers DFQ-style cannot hook: "
                                         "pass the nn.Module")
            raise NotApplicableError("teacher has no BatchNorm layers: DFQ-style needs them")
        super().setup()
        self.last_bn = torch.zeros((), device=self.ctx.device)

    def generator_loss(self, x):
        terms = []

        def hook(module, inputs, output):
            terms.append(bn_stat_distance(inputs[0], module))

        # Hooks live only for this forward: the teacher is shared with the suite's other runs.
        handles = [bn.register_forward_hook(hook) for bn in self.bns]
        try:
            loss = super().generator_loss(x)
        finally:
            for h in handles:
                h.remove()
        self.last_bn = torch.stack(terms).sum() if terms else x.new_zeros((), dtype=torch.float32)
        return loss + self.p.bn_weight * self.last_bn

    def step(self, it):
        out = super().step(it)
        out["loss_bn"] = self.last_bn.detach()
        return out
