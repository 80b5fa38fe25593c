"""The papers the rules cite (a rule's ``references``, printed by ``bncheck rules CODE``),
each spelled once: author(s), title, venue and year, arXiv number."""

from __future__ import annotations

IOFFE_SZEGEDY_2015 = (
    "Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift, "
    "ICML 2015, arXiv:1502.03167"
)
ADABN_2016 = "Li et al., Revisiting Batch Normalization for Practical Domain Adaptation (AdaBN), 2016, arXiv:1603.04779"
BATCH_RENORM_2017 = (
    "Ioffe, Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models, NeurIPS 2017, arXiv:1702.03275"
)
GROUP_NORM_2018 = "Wu & He, Group Normalization, ECCV 2018, arXiv:1803.08494"
COVARIATE_SHIFT_ADAPTATION_2020 = (
    "Schneider et al., Improving robustness against common corruptions by covariate shift adaptation, NeurIPS 2020, arXiv:2006.16971"
)
RETHINKING_BATCH_2021 = 'Wu & Johnson, Rethinking "Batch" in BatchNorm, 2021, arXiv:2105.07576'
