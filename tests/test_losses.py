"""Multi-label losses against hand computations, the ignore convention, and the config fields that pick them."""

from __future__ import annotations

import math

import pytest
import torch

import hf_cxr
from hf_cxr.losses import IGNORE_LABEL, AsymmetricLoss, FocalLoss, MultiLabelBCELoss, class_balance_weights

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [-0.5, 1.5, -2.0]])
TARGETS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def bce(z: float, y: float) -> float:
    p = 1 / (1 + math.exp(-z))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_and_focal_equal_hand_computations() -> None:
    pairs = list(zip(LOGITS.flatten().tolist(), TARGETS.flatten().tolist(), strict=True))
    expected_bce = sum(bce(z, y) for z, y in pairs) / len(pairs)
    assert MultiLabelBCELoss()(LOGITS, TARGETS).item() == pytest.approx(expected_bce, rel=1e-6)

    def focal_term(z: float, y: float, gamma: float = 2.0) -> float:
        p = 1 / (1 + math.exp(-z))
        p_t = p if y == 1 else 1 - p
        return (1 - p_t) ** gamma * bce(z, y)

    expected_focal = sum(focal_term(z, y) for z, y in pairs) / len(pairs)
    assert FocalLoss(gamma=2.0)(LOGITS, TARGETS).item() == pytest.approx(expected_focal, rel=1e-6)


def test_asymmetric_loss_equals_hand_computation() -> None:
    gamma_neg, clip = 4.0, 0.05
    total = 0.0
    for z, y in zip(LOGITS.flatten().tolist(), TARGETS.flatten().tolist(), strict=True):
        p = 1 / (1 + math.exp(-z))
        if y == 1:
            total += -math.log(p)
        else:
            shifted = max(p - clip, 0.0)
            total += -(shifted**gamma_neg) * math.log(1 - shifted)
    loss = AsymmetricLoss(gamma_pos=0.0, gamma_neg=gamma_neg, clip=clip)(LOGITS, TARGETS)
    assert loss.item() == pytest.approx(total / LOGITS.numel(), rel=1e-5)


def test_ignored_labels_are_left_out() -> None:
    targets = TARGETS.clone()
    targets[0, 1] = IGNORE_LABEL
    keep = torch.ones_like(targets, dtype=torch.bool)
    keep[0, 1] = False
    per_label = torch.nn.functional.binary_cross_entropy_with_logits(LOGITS, TARGETS, reduction="none")
    assert MultiLabelBCELoss()(LOGITS, targets).item() == pytest.approx(per_label[keep].mean().item(), rel=1e-6)


def test_class_balance_weights_grow_for_rare_findings() -> None:
    weights = class_balance_weights([1000, 100, 10], num_samples=2000, mode="inverse_frequency", beta=0.5)
    expected = torch.tensor([(2000 / 1000) ** 0.5, (2000 / 100) ** 0.5, (2000 / 10) ** 0.5])
    assert torch.allclose(weights, expected / expected.mean())
    effective = class_balance_weights([1000, 100, 10], num_samples=2000, beta=0.999)
    assert effective[0] < effective[1] < effective[2] and effective.mean().item() == pytest.approx(1.0)


def test_config_selects_the_loss_and_refuses_bad_fields() -> None:
    counts = list(range(10, 150, 10))
    model = hf_cxr.build_model(
        "cr_msnet", "tiny", loss="class_balanced_focal", class_positive_counts=counts, num_train_samples=1000
    )
    # Each model folder carries its own copy of the losses module (remote code), so compare by class name.
    assert type(model.criterion).__name__ == "FocalLoss" and model.criterion.class_weights.shape == (14,)
    assert type(hf_cxr.build_model("cr_msnet", "tiny", loss="asymmetric").criterion).__name__ == "AsymmetricLoss"
    with pytest.raises(ValueError, match="class_positive_counts"):
        hf_cxr.build_model("cr_msnet", "tiny", loss="class_balanced_focal")
    with pytest.raises(ValueError, match=r"CRMSNetConfig\.loss"):
        hf_cxr.build_config("cr_msnet", "tiny", loss="hinge")
    with pytest.raises(ValueError, match=r"class_positive_counts has 3 entries for 14"):
        hf_cxr.build_config("cr_msnet", "tiny", class_positive_counts=[1, 2, 3])
    with pytest.raises(ValueError, match=r"decision_thresholds.*Fracture"):
        hf_cxr.build_config("cr_msnet", "tiny", decision_thresholds={"Fracture": 0.3})


def test_a_curriculum_stage_sets_only_loss_fields_every_config_has() -> None:
    """The loss fields are declared by the model configs (`CXRClassifierConfig`); `LossSettings`, what a recipe's
    curriculum stage may set, names a subset of them with the same choices, so a stage can never set a field or a
    value that the config would not take."""
    import dataclasses
    import typing

    from hf_cxr.modeling.common.configuration_cxr import CXRClassifierConfig
    from hf_cxr.modeling.common.losses import CLASS_BALANCE_MODES, LOSS_TYPES, SINGLE_LABEL_LOSS_TYPES

    from hf_cxr.losses import LOSS_SETTING_FIELDS, LossSettings

    assert set(LOSS_SETTING_FIELDS) <= {field.name for field in dataclasses.fields(CXRClassifierConfig)}
    hints = typing.get_type_hints(LossSettings)
    assert set(typing.get_args(typing.get_args(hints["loss"])[0])) == {*LOSS_TYPES, *SINGLE_LABEL_LOSS_TYPES}
    assert set(typing.get_args(typing.get_args(hints["class_balance_mode"])[0])) == set(CLASS_BALANCE_MODES)
