"""Multi-label distillation: the teacher adapter, the loss against hand computations, and a real training run."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset
from transformers import TrainingArguments

import hf_cxr
from hf_cxr.distillation import DistillationTrainer, MultiLabelDistillationLoss, TeacherOutputAdapter
from hf_cxr.labels import CHEXPERT_LABELS, TORCHXRAYVISION_LABELS

# A hand-written output of torchxrayvision's densenet121-res224-chex (18 probabilities, in its order).
TEACHER_ROW = {
    "Atelectasis": 0.10,
    "Consolidation": 0.20,
    "Infiltration": 0.90,
    "Pneumothorax": 0.30,
    "Edema": 0.40,
    "Emphysema": 0.80,
    "Fibrosis": 0.70,
    "Effusion": 0.50,
    "Pneumonia": 0.60,
    "Pleural_Thickening": 0.25,
    "Cardiomegaly": 0.35,
    "Nodule": 0.95,
    "Mass": 0.85,
    "Hernia": 0.65,
    "Lung Lesion": 0.15,
    "Fracture": 0.05,
    "Lung Opacity": 0.45,
    "Enlarged Cardiomediastinum": 0.55,
}


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def bce(z: float, t: float) -> float:
    return -(t * math.log(sigmoid(z)) + (1 - t) * math.log(1 - sigmoid(z)))


def test_adapter_maps_the_18_torchxrayvision_outputs_to_chexpert() -> None:
    assert list(TEACHER_ROW) == list(TORCHXRAYVISION_LABELS)
    adapter = TeacherOutputAdapter(TORCHXRAYVISION_LABELS, CHEXPERT_LABELS)
    targets, mask = adapter(torch.tensor([list(TEACHER_ROW.values())]))
    # No Finding: prod(1 - p) over the 12 mapped CheXpert findings (ECM, CM, LO, LL, Ed, Co, Pn, At, Px, PE, PO, Fx).
    no_finding = 0.45 * 0.65 * 0.55 * 0.85 * 0.60 * 0.80 * 0.40 * 0.90 * 0.70 * 0.50 * 0.75 * 0.95
    expected = [no_finding, 0.55, 0.35, 0.45, 0.15, 0.40, 0.20, 0.60, 0.10, 0.30, 0.50, 0.25, 0.05, 0.0]
    assert targets.shape == (1, 14)
    assert torch.allclose(targets[0], torch.tensor(expected), atol=1e-6)
    assert mask.tolist() == [True] * 13 + [False]  # Support Devices: no teacher output
    assert adapter.mapping["Pleural Effusion"] == "Effusion"
    assert adapter.mapping["Pleural Other"] == "Pleural_Thickening"
    assert "Support Devices" not in adapter.mapping
    with pytest.raises(ValueError, match="18"):
        adapter(torch.rand(2, 14))


def test_adapter_prefers_exact_names_and_uses_a_teacher_no_finding_when_it_has_one() -> None:
    adapter = TeacherOutputAdapter(["Effusion", "Pleural Effusion", "no_finding", "Edema"], CHEXPERT_LABELS)
    targets, mask = adapter(torch.tensor([[0.9, 0.2, 0.7, 0.3]]))
    assert adapter.mapping["Pleural Effusion"] == "Pleural Effusion"
    assert targets[0, CHEXPERT_LABELS.index("Pleural Effusion")].item() == pytest.approx(0.2)
    assert targets[0, 0].item() == pytest.approx(0.7)  # taken from the teacher, not computed
    assert mask.sum().item() == 3
    with pytest.raises(ValueError, match="two teacher outputs"):
        TeacherOutputAdapter(["Edema", "edema"], CHEXPERT_LABELS)


def fixed_case() -> dict[str, torch.Tensor]:
    return {
        "cls_logits": torch.tensor([[0.5, -1.0, 2.0], [-0.3, 0.8, 0.1]]),
        "distillation_logits": torch.tensor([[1.5, -0.2, 0.4], [0.7, -2.0, -0.6]]),
        "labels": torch.tensor([[1.0, 0.0, -100.0], [0.0, 1.0, 1.0]]),  # -100: ignored
        "teacher_output": torch.tensor([[0.8, 0.2], [0.4, 0.6]]),  # teacher: Cardiomegaly, Effusion
    }


STUDENT = ["Cardiomegaly", "Pleural Effusion", "Fracture"]  # Fracture: no teacher source


def test_soft_loss_equals_the_hand_computation() -> None:
    case = fixed_case()
    adapter = TeacherOutputAdapter(["Cardiomegaly", "Effusion"], STUDENT)
    loss_fn = MultiLabelDistillationLoss(alpha=0.3, adapter=adapter)
    loss, parts = loss_fn(
        case["cls_logits"], case["labels"], case["teacher_output"], case["distillation_logits"], return_components=True
    )
    cls_terms = [bce(0.5, 1), bce(-1.0, 0), bce(-0.3, 0), bce(0.8, 1), bce(0.1, 1)]
    cls_loss = sum(cls_terms) / 5
    w = [1 - (0.8 + 0.4) / 2, 1 - (0.2 + 0.6) / 2]  # dynamic weights: 0.4, 0.6
    dist_terms = [w[0] * bce(1.5, 0.8), w[1] * bce(-0.2, 0.2), w[0] * bce(0.7, 0.4), w[1] * bce(-2.0, 0.6)]
    dist_loss = sum(dist_terms) / 4  # the Fracture column is masked out
    assert parts["cls_loss"].item() == pytest.approx(cls_loss, rel=1e-6)
    assert parts["distillation_loss"].item() == pytest.approx(dist_loss, rel=1e-6)
    assert loss.item() == pytest.approx(0.7 * cls_loss + 0.3 * dist_loss, rel=1e-6)


def test_hard_logits_and_reference_teacher_outputs() -> None:
    case = fixed_case()
    adapter = TeacherOutputAdapter(["Cardiomegaly", "Effusion"], STUDENT)
    z = case["distillation_logits"]

    hard = MultiLabelDistillationLoss(alpha=1.0, distillation_type="hard", adapter=adapter, dynamic_weights=False)
    expected = (bce(1.5, 1) + bce(-0.2, 0) + bce(0.7, 0) + bce(-2.0, 1)) / 4
    assert hard(case["cls_logits"], case["labels"], case["teacher_output"], z).item() == pytest.approx(expected)

    # Teacher logits: the sigmoid is applied first; alpha=1 leaves only the distillation term.
    teacher_logits = torch.logit(case["teacher_output"])
    from_logits = MultiLabelDistillationLoss(alpha=1.0, teacher_outputs="logits", adapter=adapter)
    from_probabilities = MultiLabelDistillationLoss(alpha=1.0, adapter=adapter)
    assert from_logits(case["cls_logits"], case["labels"], teacher_logits, z).item() == pytest.approx(
        from_probabilities(case["cls_logits"], case["labels"], case["teacher_output"], z).item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="probabilities"):
        from_probabilities(case["cls_logits"], case["labels"], teacher_logits * 10, z)

    # The public code: a second sigmoid on probabilities, and the unmapped label kept with target 0.5.
    reference = MultiLabelDistillationLoss(alpha=1.0, teacher_outputs="reference", adapter=adapter)
    q = [[sigmoid(0.8), sigmoid(0.2), 0.5], [sigmoid(0.4), sigmoid(0.6), 0.5]]
    w = [1 - (q[0][j] + q[1][j]) / 2 for j in range(3)]
    expected = sum(w[j] * bce(z[i, j].item(), q[i][j]) for i in range(2) for j in range(3)) / 6
    assert reference(case["cls_logits"], case["labels"], case["teacher_output"], z).item() == pytest.approx(expected)
    targets, _, mask = reference.teacher_targets(case["teacher_output"])
    assert mask.all() and targets.min() >= 0.5 and targets.max() <= sigmoid(1.0)


def test_loss_rejects_bad_settings_and_shapes() -> None:
    with pytest.raises(ValueError, match="alpha"):
        MultiLabelDistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match="teacher_outputs"):
        MultiLabelDistillationLoss(teacher_outputs="softmax")
    with pytest.raises(ValueError, match="distillation_type"):
        MultiLabelDistillationLoss(distillation_type="kl")
    case = fixed_case()
    with pytest.raises(ValueError, match="TeacherOutputAdapter"):
        MultiLabelDistillationLoss()(case["cls_logits"], case["labels"], case["teacher_output"])


class SyntheticFindings(Dataset):
    """Grey 64-px images that are sums of one fixed pattern per present teacher finding, plus noise.

    Student labels are the teacher findings mapped to CheXpert (No Finding when none is present); Support
    Devices, which the teacher cannot see, is random.
    """

    def __init__(self, size: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        patterns = torch.randn(18, 1, 64, 64, generator=generator)
        self.teacher_labels = (torch.rand(size, 18, generator=generator) < 0.25).float()
        noise = 0.3 * torch.randn(size, 1, 64, 64, generator=generator)
        self.pixel_values = torch.einsum("nt,tchw->nchw", self.teacher_labels, patterns) + noise
        targets, _ = TeacherOutputAdapter(TORCHXRAYVISION_LABELS, CHEXPERT_LABELS)(self.teacher_labels)
        targets[:, -1] = (torch.rand(size, generator=generator) < 0.5).float()
        self.labels = targets

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def train_teacher(dataset: SyntheticFindings) -> torch.nn.Module:
    """A tiny CR-MSNet on the 18 torchxrayvision findings, trained here (no pretrained teacher is downloaded)."""
    teacher = hf_cxr.build_model("cr_msnet", "tiny", labels=list(TORCHXRAYVISION_LABELS), num_channels=1)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    teacher.train()
    losses = []
    for _ in range(12):
        loss = teacher(pixel_values=dataset.pixel_values, labels=dataset.teacher_labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    return teacher.eval()


def test_distillation_trainer_lowers_the_distillation_loss(tmp_path) -> None:
    dataset = SyntheticFindings()
    teacher = train_teacher(dataset)
    teacher_state = {name: value.clone() for name, value in teacher.state_dict().items()}
    student = hf_cxr.build_model("mxa_efficientvit", "tiny")
    loss_fn = MultiLabelDistillationLoss(
        alpha=0.5, teacher_outputs="logits", adapter=TeacherOutputAdapter(TORCHXRAYVISION_LABELS, CHEXPERT_LABELS)
    )
    with torch.no_grad():
        teacher_logits = teacher(pixel_values=dataset.pixel_values).logits

    def objective() -> float:
        student.eval()
        with torch.no_grad():
            logits = student(pixel_values=dataset.pixel_values).logits
            return loss_fn(logits, dataset.labels, teacher_logits).item()

    before = objective()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=25, learning_rate=3e-3,
        remove_unused_columns=False, report_to=[], save_strategy="no", use_cpu=True, seed=0,
        dataloader_num_workers=0, logging_steps=5,
    )  # fmt: skip
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=dataset, teacher=teacher, distillation_loss=loss_fn
    )
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 5 and logged[-1] < logged[0]
    assert objective() < before
    # The teacher stays frozen and in eval mode; only the student learns.
    assert not teacher.training
    assert all(torch.equal(value, teacher_state[name]) for name, value in teacher.state_dict().items())
    # The training step distilled both heads: the student's training output carried them.
    student.train()
    output = student(pixel_values=dataset.pixel_values[:4])
    assert output.cls_logits is not None and output.distillation_logits is not None
    eval_loss = trainer.evaluate(eval_dataset=dataset)["eval_loss"]
    assert math.isfinite(eval_loss)
