"""Multi-label losses (defined once, in `hf_cxr.modeling.common.losses`, so saved models carry them)."""

from hf_cxr.modeling.common.losses import (
    IGNORE_LABEL,
    LOSS_SETTING_FIELDS,
    LOSS_TYPES,
    AsymmetricLoss,
    FocalLoss,
    LossSettings,
    MultiLabelBCELoss,
    build_loss_from_config,
    class_balance_weights,
)

__all__ = [
    "IGNORE_LABEL",
    "LOSS_SETTING_FIELDS",
    "LOSS_TYPES",
    "AsymmetricLoss",
    "FocalLoss",
    "LossSettings",
    "MultiLabelBCELoss",
    "build_loss_from_config",
    "class_balance_weights",
]
