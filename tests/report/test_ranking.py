"""Which figure ranks the models (bncheck.report.ranking.ranking_key)."""

from __future__ import annotations

import math

from bncheck.report.ranking import RankedModel, ranking_key


def entry(score: float, change: dict | None) -> RankedModel:
    return RankedModel(
        rank=0, index=0, model="m.onnx", format="onnx", score=score, noise=0.0, layers=3, worst_layer=None,
        worst_layer_score=None, accuracy=None, output_change=change, verdict="ok", rules=[], passed=True,
    )  # fmt: skip


FLIPS = {"kind": "top1_disagreement", "value": 0.1, "noise": 0.01}
REL = {"kind": "relative_error", "value": 0.1, "noise": 0.01}


def test_the_output_change_ranks_where_every_scored_model_has_one_of_one_kind():
    assert ranking_key([entry(0.1, FLIPS), entry(0.2, FLIPS)]) == "output_change"
    # a model without BN layers (no score, no change) does not take the key away
    assert ranking_key([entry(0.1, FLIPS), entry(0.2, FLIPS), entry(math.nan, None)]) == "output_change"


def test_the_score_ranks_where_an_output_change_is_missing_or_of_another_kind():
    assert ranking_key([entry(0.1, FLIPS), entry(0.2, None)]) == "score"
    assert ranking_key([entry(0.1, FLIPS), entry(0.2, REL)]) == "score"
    assert ranking_key([entry(0.1, None), entry(0.2, None)]) == "score"
    assert ranking_key([entry(math.nan, None), entry(math.nan, None)]) == "score"
