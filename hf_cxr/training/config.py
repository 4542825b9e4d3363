"""The typed training configuration: one dataclass per recipe section, and a whole run as `TrainingConfig`.

A recipe (`training_scripts/recipes/*.yaml`, shipped inside the package as `hf_cxr.recipes_data`) is parsed by
pydantic into a `Recipe`: every key is a field with a type, a default and one line of documentation, and an unknown
key or a value of the wrong type is refused with a `ValueError` naming its dotted path (`optimization.batch_size`).
The training loop reads attributes, so a key that no code reads cannot exist. Command-line `--set section.key=value`
assignments are applied to the recipe and parsed again (`apply_overrides`). `TrainingConfig` is the recipe plus
what the command line gives (model, dataset, output folder, checkpointing ...): `hf_cxr.training.train` runs it and
`hf_cxr.training.arguments.config_from_arguments` builds it from `train.py`'s flags.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass, is_pydantic_dataclass

from hf_cxr.losses import LossSettings

# Every section refuses an unknown key and a value of the wrong type, when it is built and when a field is set later
# (`config.optimization.batch_size = "abc"` or a misspelled attribute raises, naming the field).
STRICT = ConfigDict(extra="forbid", validate_assignment=True)


@dataclass(config=STRICT)
class ModelSection:
    """`model`: the architecture and configuration the run builds."""

    model_type: str | None = None
    """The architecture the recipe is for: train.py refuses another `--model`."""
    preset: str = "paper"
    """Config preset: `paper` (the published configuration) or `tiny` (CPU seconds); `--preset` overrides it."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Config fields set on top of the preset (`build_model(model_type, preset, **overrides)`)."""


@dataclass(config=STRICT)
class SplitFractions:
    """A patient split the converter drew at random (Lung-PET-CT-Dx), given as `data.split_protocol`."""

    fractions: dict[str, float]
    """Share of the patients per split, e.g. {train: 0.7, validation: 0.1, test: 0.2}; must equal the conversion's."""
    seed: int
    """The converter's seed; must equal the conversion's."""


@dataclass(config=STRICT, kw_only=True)
class Oversampling:
    """`data.oversample_minority` (CT): rows of one class repeated in the training split."""

    class_: str = Field(alias="class")
    """The class (one of the model's labels) whose training rows are repeated."""
    target_count: int
    """How many rows of that class the training split serves after repetition."""
    train_only: bool = True
    """Must be true: the validation split is never oversampled."""


@dataclass(config=STRICT)
class DataSection:
    """`data`: which splits train and validate, and what the dataset must be (each key takes effect or is checked
    against the dataset's conversion report, see `hf_cxr.training.data.apply_data_section`)."""

    dataset: str | None = None
    """The converted dataset's name (`chestxray14`, `chexpert`, `lung_pet_ct_dx`); must match the conversion."""
    labels: str | None = None
    """The label set the model predicts (`chestxray14`, `chexpert`); must be the model's labels."""
    train_split: str = "train"
    """The split that trains."""
    validation_split: str = "validation"
    """The split that selects the best model (never the test split)."""
    resize_mode: Literal["stretch", "pad", "center_crop"] | None = None
    """2D: the image processor's resize mode (None: the processor's default)."""
    split_protocol: Literal["official", "random_patient"] | SplitFractions | None = None
    """How the dataset was split (ChestX-ray14: official or random_patient; Lung-PET-CT-Dx: fractions and seed); must
    match the conversion; None: the conversion's, recorded."""
    uncertain_labels: Literal["ones", "zeros", "ignore"] | None = None
    """CheXpert's uncertain-label policy; must match the conversion (`hf-cxr convert chexpert --uncertain`)."""
    views: list[str] | None = None
    """CheXpert views (frontal, lateral) to train and validate on; rows of other views are left out."""
    task: Literal["ag", "abeg"] | None = None
    """CT (Lung-PET-CT-Dx): the classes (A vs G, or all four); must match the conversion."""
    processor: dict[str, Any] | None = None
    """CT: `MMCAFNetProcessor` arguments, plus `fit_clinical_statistics: train` (clinical ranges and fill values fitted
    on the training split, saved with the model)."""
    oversample_minority: Oversampling | None = None
    """CT: repeat a class's training rows up to a count."""


@dataclass(config=STRICT)
class CurriculumStage(LossSettings):
    """One `curriculum` stage: which images, which loss (the `LossSettings` fields it sets on the model's config),
    how long, at which learning rate."""

    description: str | None = None
    """What the stage is for (printed when it starts)."""
    exclude_no_finding: bool = False
    """2D: train on abnormal images only (rows whose labels are all 0 are left out)."""
    epochs: float | None = None
    """The stage's length in epochs of its data (None: `optimization.epochs`)."""
    learning_rate: float | None = None
    """The stage's peak learning rate (None: `optimization.learning_rate`)."""
    classification_head: Literal["image", "table", "fused"] | None = None
    """CT (MMCAF-Net): whose head's logits are trained during the stage."""
    frozen_parts: list[Literal["image_encoder", "table_encoder", "fusion"]] | None = None
    """CT (MMCAF-Net): parts frozen and kept in eval mode during the stage."""


@dataclass(config=STRICT)
class RandomResizedCrop:
    """A random crop of the image scaled back to its own size (the processor resizes to the model's size after)."""

    scale: tuple[float, float] = (0.8, 1.0)
    """Range of the crop's area as a share of the image."""
    ratio: tuple[float, float] = (0.75, 4 / 3)
    """Range of the crop's aspect ratio."""
    p: float = 1.0
    """Probability of cropping an image."""


@dataclass(config=STRICT)
class Flip:
    """A horizontal flip (left/right carries anatomy in chest radiographs)."""

    p: float = 0.0
    """Probability of flipping an image."""


@dataclass(config=STRICT)
class Rotation:
    """A rotation by an angle drawn uniformly from [-degrees, degrees]; CT: every slice of a slab by that angle."""

    degrees: float
    """Largest angle, in degrees."""
    p: float = 1.0
    """Probability of rotating an image."""


@dataclass(config=STRICT)
class Affine:
    """A random shift, scale and shear (torchvision's RandomAffine without rotation)."""

    translate: tuple[float, float] = (0.0, 0.0)
    """Largest shift as a share of the width and height."""
    scale: tuple[float, float] = (1.0, 1.0)
    """Range of the scale factor."""
    shear: float = 0.0
    """Largest shear angle in degrees (0: none)."""
    p: float = 1.0
    """Probability of the transform."""


@dataclass(config=STRICT)
class Elastic:
    """An elastic deformation (torchvision's ElasticTransform)."""

    alpha: float = 50.0
    """Magnitude of the displacements."""
    sigma: float = 5.0
    """Smoothness of the displacements."""
    p: float = 1.0
    """Probability of the transform."""


@dataclass(config=STRICT)
class GaussianBlur:
    """A Gaussian blur with a random sigma."""

    kernel_size: int = 3
    """Odd kernel size in pixels."""
    sigma: tuple[float, float] = (0.1, 1.0)
    """Range of the standard deviation, in pixels."""
    p: float = 1.0
    """Probability of blurring an image."""


@dataclass(config=STRICT)
class Sharpen:
    """CT: an unsharp blend x + alpha (sharp(x) - x) of every slice, alpha drawn uniformly from the range."""

    alpha: tuple[float, float]
    """Range of the blend weight."""
    p: float = 1.0
    """Probability of sharpening a slab."""


@dataclass(config=STRICT)
class AugmentationSection:
    """`augmentation`: random changes of each training image, read at the model's size and before normalisation
    (2D: `hf_cxr.training.augment.RadiographAugmentation`, in the loader or on the device, see `augment_on`), or of
    each processed CT slab; None everywhere (the default) trains on the images as they are."""

    random_resized_crop: RandomResizedCrop | None = None
    """2D: random crop."""
    horizontal_flip: Flip | None = None
    """2D: horizontal flip."""
    rotate: Rotation | None = None
    """2D and CT: rotation."""
    affine: Affine | None = None
    """2D: shift, scale and shear."""
    elastic: Elastic | None = None
    """2D: elastic deformation."""
    gaussian_blur: GaussianBlur | None = None
    """2D: blur."""
    sharpen: Sharpen | None = None
    """CT: sharpening."""


@dataclass(config=STRICT)
class GradientClipping:
    """Gradient clipping after each backward pass."""

    mode: Literal["norm", "agc"]
    """`norm`: the global L2 norm (Accelerate's clip_grad_norm_); `agc`: adaptive gradient clipping (timm)."""
    value: float
    """The norm's maximum, or AGC's clip factor."""


@dataclass(config=STRICT)
class Ema:
    """An exponential moving average of the weights (timm's ModelEmaV3); validation and the saved model use it."""

    enabled: bool = False
    """Keep the average."""
    decay: float = 0.9998
    """Its decay per optimizer step."""


@dataclass(config=STRICT)
class OptimizationSection:
    """`optimization`: optimiser, schedule, batch, precision and seed."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    """AdamW, or SGD with `momentum`."""
    learning_rate: float = 1e-4
    """Peak learning rate of a stage that sets none."""
    weight_decay: float = 0.01
    """Decoupled weight decay (AdamW) or L2 penalty (SGD)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's betas."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    momentum: float = 0.0
    """SGD's momentum."""
    batch_size: int = 32
    """Images per device and batch; the global batch is batch_size x processes x gradient_accumulation_steps."""
    epochs: float = 1.0
    """Length of a stage that sets none, in epochs of its data (`--max-steps` overrides)."""
    scheduler: Literal["cosine", "constant"] = "cosine"
    """Per stage: cosine decay from the stage's learning rate to `min_learning_rate`, or constant."""
    warmup_epochs: float = 0.0
    """Linear warm-up at the start of the first stage, in epochs."""
    warmup_learning_rate: float = 0.0
    """The learning rate the warm-up starts from."""
    min_learning_rate: float = 0.0
    """Where the cosine decay ends."""
    cooldown_epochs: float = 0.0
    """Epochs at `min_learning_rate` at the end of each stage."""
    gradient_clipping: GradientClipping | None = None
    """None: no clipping."""
    ema: Ema = Field(default_factory=Ema)
    """Model EMA."""
    seed: int = 0
    """Seeds the model's initialisation, the data order and the augmentation."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Accelerate's mixed precision (YAML's bare `no` reads as false, which means `no`)."""
    gradient_accumulation_steps: int = 1
    """Batches per optimizer step."""

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _false_is_no(cls, value: Any) -> Any:
        return "no" if value is False else value


@dataclass(config=STRICT)
class DistillationSection:
    """`distillation` (2D models): a frozen teacher's scores as second targets (`hf_cxr.distillation`)."""

    enabled: bool = False
    """Distil (`--teacher` turns it on)."""
    teacher: str | None = None
    """The teacher: a saved hf-cxr model folder or a Hub id in the local cache (`--teacher`)."""
    teacher_outputs: Literal["logits", "operating_point_scores", "reference"] = "logits"
    """The teacher's targets: its sigmoids, its operating-point scores (torchxrayvision's op_norm) or a sigmoid of
    those (the MXA public code)."""
    type: Literal["soft", "hard"] = "soft"
    """Soft targets (the teacher's scores) or hard ones (scores above 0.5)."""
    alpha: float = 0.5
    """Weight of the distillation term: (1 - alpha) label loss + alpha distillation loss."""
    dynamic_weights: bool = True
    """Weigh each finding by 1 - the batch's mean teacher score (the MXA paper)."""


@dataclass(config=STRICT)
class PatientLevel:
    """CT validation: how a patient's slabs are cut and their scores combined."""

    slabs: str | None = None
    """How slabs are cut from each series (the processor's `slice_selection`; None: the processor's own)."""
    slab_stride: int | None = None
    """Slices between sliding slabs (None: the processor's)."""
    aggregate: Literal["max", "mean"] = "max"
    """A patient's score per class: the max (the paper) or the mean over their slabs."""


@dataclass(config=STRICT)
class EvaluationSection:
    """`evaluation`: how validation picks the checkpoint written to the model folder."""

    select_best_by: str | None = None
    """The validation number to maximise (None: macro ROC-AUC for 2D, patient AUROC for two CT classes, accuracy for
    more)."""
    positive_class: str | None = None
    """CT with two classes: the class whose AUROC is reported."""
    patient_level: PatientLevel = Field(default_factory=PatientLevel)
    """CT: slabs per patient."""


@dataclass(config=STRICT)
class Recipe:
    """A training recipe: the sections above, each optional."""

    model: ModelSection = Field(default_factory=ModelSection)
    """The model built."""
    data: DataSection = Field(default_factory=DataSection)
    """The data trained and validated on."""
    curriculum: dict[str, CurriculumStage] = Field(default_factory=dict)
    """Stages in order; none: one stage of `optimization.epochs` on all training images."""
    augmentation: AugmentationSection = Field(default_factory=AugmentationSection)
    """Training augmentation."""
    optimization: OptimizationSection = Field(default_factory=OptimizationSection)
    """Optimiser and schedule."""
    distillation: DistillationSection = Field(default_factory=DistillationSection)
    """Knowledge distillation."""
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    """Model selection on validation."""

    def set_learning_rate(self, value: float) -> None:
        """Make `value` the peak learning rate of every stage (what `--learning-rate` does)."""
        self.optimization.learning_rate = value
        for stage in self.curriculum.values():
            stage.learning_rate = value


@dataclass(config=STRICT)
class TrainingConfig:
    """A whole training run: the recipe plus what `train.py`'s command line gives besides it."""

    model_type: str
    """The architecture trained (`--model`): cr_msnet, ma_msf, mxa_efficientvit or mmcaf_net."""
    dataset: str
    """A converted dataset folder (`hf-cxr convert`) or a Hub id (`--dataset`)."""
    output_dir: Path
    """The final model, checkpoints and logs go here (`--output-dir`)."""
    recipe: Recipe = Field(default_factory=Recipe)
    """The resolved recipe (file, `--set` and flags applied)."""
    recipe_name: str | None = None
    """What `--recipe` named (recorded in the run record), None without one."""
    preset: str | None = None
    """`--preset`: overrides `recipe.model.preset` (None: the recipe's)."""
    max_steps: int | None = None
    """Total optimizer steps, split over the stages by their epochs (None: the stages' epochs)."""
    resume_from_checkpoint: str | None = None
    """A checkpoint folder, or `latest` (the newest in OUTPUT_DIR/checkpoints; none there: start)."""
    overwrite_output_dir: bool = False
    """Start a new run in an output folder that holds one (its checkpoints, logs and model go)."""
    compile: bool = False
    """`torch.compile` the model."""
    checkpointing_steps: int = 500
    """Write a checkpoint every this many optimizer steps."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    eval_steps: int | None = None
    """Validate every this many steps (None: every epoch of the shortest stage)."""
    stop_after_steps: int | None = None
    """Leave after this many optimizer steps of this invocation (resume with `latest`)."""
    num_workers: int | None = None
    """Data-loader worker processes per training process (None: `hf_cxr.training.data.default_num_workers`)."""
    augment_on: Literal["auto", "cpu", "device"] = "auto"
    """2D: where the recipe's augmentation runs: `cpu` (in the data loader), `device` (batched on the training
    device; the loader only reads and collates), `auto` (device on a GPU, else cpu). Same images either way."""
    use_cpu: bool = False
    """Train on the CPU even when a GPU is visible (`--use-cpu`)."""
    log_with: str = "auto"
    """Comma-separated trackers: csv, tensorboard, wandb, none; auto = csv, plus tensorboard when installed."""
    command_line: list[str] | None = None
    """The command that started the run (`hf-cxr train ...` or `train.py ...`), recorded in metrics.json and shown
    on the model card; None for a run started from Python, whose command line says nothing about it."""

    @property
    def built_preset(self) -> str:
        """The preset the run builds: `--preset`, else the recipe's."""
        return self.preset or self.recipe.model.preset

    def check(self) -> None:
        """Refuse a model that train.py does not train, a recipe for another model, recipe keys that the model's
        path (2D or CT) would ignore, and a `max_steps` below the number of curriculum stages (each trains at least
        one step); raises `ValueError` naming them."""
        from hf_cxr.registry import ARCHITECTURES, is_ct_model
        from hf_cxr.training.schedule import check_max_steps  # schedule reads this module's sections

        if self.model_type not in ARCHITECTURES:  # every architecture trains: 2D images or CT slabs
            raise ValueError(f"train.py trains {sorted(ARCHITECTURES)}; {self.model_type!r} is not one of them")
        wanted = self.recipe.model.model_type
        if wanted and wanted != self.model_type:
            named = f"recipe '{self.recipe_name}'" if self.recipe_name else "the recipe"
            raise ValueError(f"{named} is for model {wanted!r}, not {self.model_type!r}")
        _check_model_path(self.recipe, is_ct_model(self.model_type))
        check_max_steps(self.max_steps, max(len(self.recipe.curriculum), 1))  # a recipe without one: one stage


def _check_model_path(recipe: Recipe, ct: bool) -> None:
    """Refuse recipe keys that the chosen architecture's path (2D or CT) would ignore."""
    wrong = ("exclude_no_finding",) if ct else ("classification_head", "frozen_parts")
    for name, stage in recipe.curriculum.items():
        used = [key for key in wrong if getattr(stage, key)]
        if used:
            raise ValueError(f"curriculum.{name}: {used} do not apply to {'CT' if ct else '2D'} models")
    if ct and recipe.data.resize_mode:
        raise ValueError("data.resize_mode applies to 2D models; a CT slab's size is data.processor's")
    if ct and recipe.distillation.enabled:
        raise ValueError("distillation is implemented for the 2D classifiers only")
    if not ct:
        ct_only = [f"data.{key}" for key in ("processor", "oversample_minority", "task") if getattr(recipe.data, key)]
        ct_only += ["augmentation.sharpen"] if recipe.augmentation.sharpen else []
        if ct_only:
            raise ValueError(f"{ct_only} apply to CT models (MMCAF-Net) only")


# ------------------------------------------------------------------------------------------------ reading

RECIPE_ADAPTER = TypeAdapter(Recipe)
# Config class names: pydantic puts a union member's name in an error's location; it is not a key of the recipe.
_UNION_TAGS = frozenset(name for name, value in dict(globals()).items() if is_pydantic_dataclass(value))


def recipes_dir() -> Path:
    """Where the shipped recipes live (the repository's `training_scripts/recipes`, packaged as data)."""
    return Path(str(resources.files("hf_cxr.recipes_data")))


def available_recipes() -> list[str]:
    """The names of the shipped recipes."""
    return sorted(path.stem for path in recipes_dir().glob("*.yaml"))


def _key_path(location: Sequence[str | int]) -> str:
    """`('optimization', 'betas', 0)` as `optimization.betas[0]`, leaving out pydantic's union-member tags."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in _UNION_TAGS and not any(mark in part for mark in "[("):
            text += f".{part}" if text else part
    return text


def describe_errors(error: ValidationError, where: str) -> str:
    """A pydantic validation error as one line: the unknown keys, then every wrong value, each named by its path."""
    problems: dict[str, list[str]] = {}
    unknown: list[str] = []
    for item in error.errors():
        path = _key_path(item["loc"])
        if item["type"] == "unexpected_keyword_argument":
            unknown.append(path)
            continue
        value = item.get("input")
        shown = "" if item["type"] == "missing" or isinstance(value, Mapping) else f" (got {value!r})"
        problems.setdefault(path, [])
        if item["msg"] + shown not in problems[path]:
            problems[path].append(item["msg"] + shown)
    # A union member that failed deeper down (a mapping missing a key) explains more than the other member's "should
    # be 'official' or ...": leave out a path when a longer one under it is reported.
    paths = [p for p in problems if not any(o.startswith(p + ".") for o in [*problems, *unknown])]
    parts = [f"unknown recipe keys {unknown}"] if unknown else []
    parts += [f"{path or 'recipe'}: {' or '.join(problems[path])}" for path in paths]
    return f"{where}: " + "; ".join(parts)


def parse_recipe(values: Mapping[str, Any] | None, where: str = "recipe") -> Recipe:
    """A recipe mapping (parsed YAML) as a `Recipe`. Raises `ValueError` naming every unknown key and every value of
    the wrong type by its dotted path, `where` first."""
    if values is not None and not isinstance(values, Mapping):
        raise ValueError(f"{where}: a recipe is a mapping of sections, got {type(values).__name__}")
    try:
        return RECIPE_ADAPTER.validate_python(dict(values or {}))
    except ValidationError as error:
        raise ValueError(describe_errors(error, where)) from None


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data (what `recipe.yaml` holds): every field that is set, defaults included."""
    return RECIPE_ADAPTER.dump_python(recipe, mode="json", by_alias=True, exclude_none=True)


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe by shipped name (e.g. `cr_msnet_chestxray14`) or YAML path, parsed. Raises `ValueError` for a name
    that is neither, a file that is not YAML, and every unknown key or wrong value (named by its path)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = recipes_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"no recipe '{name_or_path}': not a file and not one of {available_recipes()}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"'{path}': not valid YAML ({error})") from error
    return parse_recipe(values, str(path))


def set_by_path(target: dict[str, Any], dotted_key: str, value: Any) -> None:
    """`target["a"]["b"] = value` for the key `a.b`, creating the mappings on the way; raises `ValueError` when a
    key on the way holds something other than a mapping."""
    parts = dotted_key.split(".")
    node = target
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set '{dotted_key}': '{part}' is not a section")
    node[parts[-1]] = value


def apply_assignments(target: dict[str, Any], assignments: Sequence[str], option: str) -> None:
    """Apply `key.path=value` assignments to `target` in place, each value parsed as YAML; `option` names the
    command-line flag in errors (`--set`, `hf-cxr bench --model-config`). Raises `ValueError` for an assignment
    without `=`, a value that is not YAML, or a path through a value that is not a mapping."""
    for assignment in assignments:
        key, separator, raw = assignment.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"{option} expects key.path=value, got '{assignment}'")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"{option} {assignment!r}: the value is not valid YAML ({error})") from None
        set_by_path(target, key.strip(), value)


def apply_overrides(recipe: Recipe, assignments: Sequence[str], option: str = "--set") -> Recipe:
    """A new recipe: `recipe` with each `section.key=value` assignment applied, parsed again. Raises `ValueError`
    for a malformed assignment, an unknown key or a wrong value (named by its path)."""
    values = copy.deepcopy(recipe_dict(recipe))
    apply_assignments(values, assignments, option)
    return parse_recipe(values, f"recipe after {option}")
