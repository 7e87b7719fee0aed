"""KD-UNR: Hinton KD on unrelated data (CIFAR-10->MNIST as 3 channels, the reference's recalled pair; for
MNIST, CIFAR-10 in grayscale, and for CIFAR-100, MNIST: our choices).

training_batches adapts the source to the teacher's input shape and normalisation.
"""
from __future__ import annotations

from harness.registry import METHODS
from methods.kd_rel import KDRel

UNRELATED = {"mnist": "cifar10", "cifar10": "mnist", "cifar100": "mnist"}


@METHODS.register("kd_unr")
class KDUnr(KDRel):
    name = "kd_unr"
    defaults = UNRELATED
