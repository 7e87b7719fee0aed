"""KD-REL: Hinton KD on related data (MNIST->USPS, CIFAR-10<->CIFAR-100: the paper's pairs as the reference
recalls them).

Only the default data source differs from KD-ORI; `data` still chooses any registered dataset.
"""
from __future__ import annotations

from harness.errors import HarnessError
from harness.registry import METHODS
from methods.kd_ori import KDOri

RELATED = {"mnist": "usps", "cifar10": "cifar100", "cifar100": "cifar10"}


@METHODS.register("kd_rel")
class KDRel(KDOri):
    name = "kd_rel"
    defaults = RELATED

    def data_source(self):
        if self.p.data is not None:
            return self.p.data
        ds = self.ctx.dataset
        if ds is None:  # distill() without a suite: the train_set passed in is the alternative data
            return None
        if ds not in self.defaults:
            raise HarnessError(f"{self.name}: no default data source for dataset {ds!r}; "
                               f"set methods.{self.name}.data")
        return self.defaults[ds]

    @classmethod
    def training_data(cls, params, dataset):
        return params.data or cls.defaults.get(dataset)
