"""Configuration fields every hf-cxr 2D multi-label classifier shares; each architecture's config subclasses it."""

import dataclasses
import difflib
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassError
from transformers import PretrainedConfig

from .labels import CHESTXRAY14_LABELS, label_maps
from .losses import CLASS_BALANCE_MODES, LOSS_TYPES

# Keyword arguments a config takes without keeping an attribute of that name: `labels` becomes id2label/label2id.
CONSUMED_INPUTS = frozenset({"labels"})


@strict(accept_kwargs=True)
class CXRClassifierConfig(PretrainedConfig):
    r"""Shared fields of the multi-label chest X-ray classifiers (documented once here).

    Fields are declared as in transformers 5 (`PretrainedConfig` is a dataclass, checked by huggingface_hub's
    `@strict`): keyword-only, typed (a value of another type raises `StrictDataclassFieldValidationError`, naming the
    field), with the defaults below; an architecture's config adds its own and may give a shared one another default.

    Args:
        image_size (`int`, defaults to 224): input height and width.
        num_channels (`int`, defaults to 3): input channels.
        classifier_dropout (`float`, defaults to 0.2): dropout before the classifier.
        loss (`str`, defaults to `"bce"`): `bce`, `focal`, `class_balanced_focal` or `asymmetric` (the training recipe
            picks the paper's loss for each stage).
        focal_gamma (`float`, defaults to 2.0): focusing parameter of the focal losses.
        class_positive_counts (`list[int]`, *optional*): positives per finding in the training split (needed by
            `class_balanced_focal`; the training script writes it from the dataset).
        num_train_samples (`int`, *optional*): size of the training split (with `class_positive_counts`).
        class_balance_mode (`str`, defaults to `"effective_number"`): `effective_number` (Cui et al., CVPR 2019) or
            `inverse_frequency` ((N / n_c)^beta).
        class_balance_beta (`float`, defaults to 0.9999): beta of the chosen class-balance rule.
        asymmetric_gamma_pos, asymmetric_gamma_neg, asymmetric_clip (`float`, defaults 0, 4, 0.05): the asymmetric
            loss of Ridnik et al. (ICCV 2021).
        decision_thresholds (`dict[str, float]`, *optional*): per-finding thresholds chosen on the validation split by
            the evaluation step (Youden); 0.5 where absent.
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal init of linear layers outside the
            timm backbones.
        labels (`list[str]` or `str`, *optional*): finding names, in output order, or the name of a label set
            (`chestxray14`, `chexpert`, `torchxrayvision`); defaults to the architecture's dataset
            (`default_labels`). `id2label`/`label2id` are derived from it. `problem_type` is
            `multi_label_classification`: one sigmoid per finding, never a softmax.

    Raises:
        `ValueError`: at construction (`_validate`, extended by each architecture's config), naming the field: a
            `problem_type` other than the architecture's (`default_problem_type`), a `loss` not in `loss_types`, an
            unknown `class_balance_mode`, `class_positive_counts` not of `num_labels` entries, `decision_thresholds`
            for labels the model does not have, repeated label names, or `labels` beside a `num_labels` or
            `id2label` that disagrees with them.
        `StrictDataclassFieldValidationError` (huggingface_hub): a field given a value of another type.
    """

    default_labels: ClassVar[tuple[str, ...]] = CHESTXRAY14_LABELS
    # The `loss` names this architecture's head accepts (multi-label sigmoid losses by default).
    loss_types: ClassVar[tuple[str, ...]] = LOSS_TYPES
    presets: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}}
    # The one `problem_type` the architecture's head implements (its loss and the pipelines follow it): one sigmoid
    # per finding, never a softmax.
    default_problem_type: ClassVar[str] = "multi_label_classification"

    image_size: int = 224
    num_channels: int = 3
    classifier_dropout: float | int = 0.2
    loss: str = "bce"
    focal_gamma: float | int = 2.0
    class_positive_counts: list[int] | None = None
    num_train_samples: int | None = None
    class_balance_mode: str = "effective_number"
    class_balance_beta: float | int = 0.9999
    asymmetric_gamma_pos: float | int = 0.0
    asymmetric_gamma_neg: float | int = 4.0
    asymmetric_clip: float | int = 0.05
    decision_thresholds: dict[str, float] | None = None
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs: Any) -> None:
        """Called by transformers' generated `__init__` with the keyword arguments that are not fields (`labels`,
        `num_labels`, ...). Each architecture's config first normalises its own fields (tuples to the lists that
        config.json stores, None to empty dicts), then calls this one, which derives the label maps, sets the
        `problem_type`, runs `PretrainedConfig.__post_init__` and validates every field (`_validate`)."""
        if self.class_positive_counts is not None:
            self.class_positive_counts = list(self.class_positive_counts)
        self.decision_thresholds = dict(self.decision_thresholds or {})
        labels = kwargs.pop("labels", None)
        if labels is not None:  # names win over a count, but never silently over a different one
            id2label, label2id = label_maps(labels)
            count = kwargs.pop("num_labels", None)
            if count is not None and count != len(id2label):
                self._fail("num_labels", f"({count}) disagrees with the {len(id2label)} labels given; give one of them")
            if self.id2label is not None and {int(k): v for k, v in self.id2label.items()} != id2label:
                self._fail("id2label", "disagrees with the labels given; give one of them")
            self.id2label, self.label2id = id2label, label2id
        elif self.id2label is None and "num_labels" not in kwargs:
            self.id2label, self.label2id = label_maps(self.default_labels)
        if self.problem_type is None:
            self.problem_type = self.default_problem_type
        super().__post_init__(**kwargs)
        self._validate()

    @property
    def custom_pipelines(self) -> dict[str, Any]:
        """The pipeline tasks a saved model carries as remote code (`pipeline_cxr.py`), as `transformers.pipeline`
        reads them: a task registered in this process with a class of the same name (hf-cxr registers its tasks when
        imported) is left out, so that the registered class runs without `trust_remote_code`, as registered Auto
        classes take precedence over a saved `auto_map`. `to_dict` and `save_pretrained` write every entry."""
        saved = self.__dict__.get("custom_pipelines") or {}
        if not saved:
            return {}
        from transformers.pipelines import PIPELINE_REGISTRY

        def registered(task: str, entry: Any) -> bool:
            known = PIPELINE_REGISTRY.supported_tasks.get(task)
            if known is None or not isinstance(entry, dict) or not isinstance(entry.get("impl"), str):
                return False
            return getattr(known["impl"], "__name__", None) == entry["impl"].rsplit(".", 1)[-1]

        return {task: entry for task, entry in saved.items() if not registered(task, entry)}

    @custom_pipelines.setter
    def custom_pipelines(self, value: dict[str, Any] | None) -> None:
        self.__dict__["custom_pipelines"] = value

    @property
    def pixel_values_shape(self) -> tuple[int, ...]:
        """The shape of one input, `pixel_values[i]`: (num_channels, image_size, image_size)."""
        return (self.num_channels, self.image_size, self.image_size)

    def _fail(self, field: str, problem: str) -> None:
        raise ValueError(f"{type(self).__name__}.{field} {problem}")

    def _validate(self) -> None:
        """Checks of the shared fields; subclasses extend it with their own (and call this one)."""
        if self.problem_type != self.default_problem_type:
            self._fail("problem_type", f"must be {self.default_problem_type!r} (what this architecture's head, its "
                       f"loss and its pipelines compute), got {self.problem_type!r}")  # fmt: skip
        if self.loss not in self.loss_types:
            self._fail("loss", f"must be one of {self.loss_types}, got {self.loss!r}")
        if self.class_balance_mode not in CLASS_BALANCE_MODES:
            self._fail("class_balance_mode", f"must be one of {CLASS_BALANCE_MODES}, got {self.class_balance_mode!r}")
        counts = self.class_positive_counts
        if counts is not None and len(counts) != self.num_labels:
            self._fail("class_positive_counts", f"has {len(counts)} entries for {self.num_labels} labels")
        unknown = sorted(set(self.decision_thresholds) - set(self.id2label.values()))
        if unknown:
            self._fail("decision_thresholds", f"names labels the model does not have: {unknown}")

    @classmethod
    def takes_input(cls, name: str) -> bool:
        """Whether `name` is a keyword this config uses: one of its fields, an input it consumes (`labels`) or a
        settable property (`num_labels`). A method's or read-only property's name is not one."""
        if name in CONSUMED_INPUTS or name in {item.name for item in dataclasses.fields(cls)}:
            return True
        attribute = getattr(cls, name, None)
        return isinstance(attribute, property) and attribute.fset is not None

    @classmethod
    def from_preset(cls, preset: str = "paper", **overrides: Any) -> "CXRClassifierConfig":
        """A config from a named preset (`paper`: the published configuration, `tiny`: CPU seconds), overridden.

        Raises `ValueError` for an unknown preset, for an override that `takes_input` refuses: a name that is no
        field of the config (a misspelled field would otherwise be stored and never read, and the model built
        without it), or the name of a method or read-only property (`to_dict`, `pixel_values_shape`); for a value of
        the wrong type (`image_size="64"`, naming the field and the type it takes); and as `_validate` does.
        """
        if preset not in cls.presets:
            raise ValueError(f"unknown {cls.model_type} preset {preset!r}; choose from {sorted(cls.presets)}")
        unknown = [name for name in overrides if not cls.takes_input(name)]
        if unknown:
            fields = [item.name for item in dataclasses.fields(cls)]
            named = []
            for name in unknown:
                # A field holding every word of the name (num_heads: num_attention_heads), else the closest spelling.
                words = set(name.split("_"))
                holding = [field for field in fields if words <= set(field.split("_"))]
                hint = holding if len(holding) == 1 else difflib.get_close_matches(name, fields, n=1)
                named.append(name + (f" (did you mean {hint[0]}?)" if hint else ""))
            raise ValueError(f"{cls.__name__} ({cls.model_type}) has no field {', '.join(named)}")
        try:
            return cls(**{**cls.presets[preset], **overrides})
        except StrictDataclassError as error:  # a value of the wrong type (`@strict` checks every field's type)
            reason = str(error).strip().splitlines()[-1].strip()
            raise ValueError(f"{cls.__name__} ({cls.model_type}): {reason}") from error
