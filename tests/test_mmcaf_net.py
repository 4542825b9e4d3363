"""MMCAF-Net: model shapes, KAN B-splines, loss, freezing, save/load, remote code, processor on real A0002 slices,
clinical encoding, pipeline and training (tiny preset, CPU)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES
from hf_cxr.modeling.common.clinical import ABEG_LABELS, AG_LABELS
from hf_cxr.modeling.common.losses import SoftmaxFocalLoss
from hf_cxr.modeling.mmcaf_net import MMCAFNetConfig, MMCAFNetForCTClassification, MMCAFNetProcessor
from hf_cxr.modeling.mmcaf_net.modeling_mmcaf_net import KANLayer
from transformers import (
    AutoModel,
    AutoModelForVideoClassification,
    AutoProcessor,
    Trainer,
    TrainingArguments,
    pipeline,
)

import hf_cxr

LUNG = FIXTURES / "lung_pet_ct_dx"
SERIES_DIR = (
    LUNG
    / "Lung_Dx-A0002"
    / "04-25-2007-NA-ThoraxAThoraxRoutine Adult-34834"
    / "3.000000-ThoraxRoutine  8.0.0  B40f-10983"
)
ANNOTATIONS = LUNG / "Annotation" / "A0002"
# The fixture's six slices sorted by ImagePositionPatient z (see the fixture README); 1-08 has no box.
FILES_BY_Z = ["1-13.dcm", "1-12.dcm", "1-11.dcm", "1-10.dcm", "1-09.dcm", "1-08.dcm"]
CLINICAL = {
    "Sex": "F",
    "Age": 58,
    "weight (kg)": "NA",
    "T-Stage": "T1b",
    "N-Stage": "N2",
    "Ｍ-Stage": "M1a",
    "Smoking History": 0,
}


def tiny_model(**overrides) -> MMCAFNetForCTClassification:
    return hf_cxr.build_model("mmcaf_net", "tiny", **overrides)


def tiny_processor(**overrides) -> MMCAFNetProcessor:
    return MMCAFNetProcessor(**{"num_slices": 4, "size": 32, **overrides})


def batch(size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(size, 1, 12, 32, 32), torch.rand(size, 7) * 2 - 1


# ------------------------------------------------------------------------------------------------ config


def test_config_labels_and_checks() -> None:
    config = MMCAFNetConfig.from_preset("tiny")
    assert tuple(config.id2label.values()) == AG_LABELS == ("adenocarcinoma", "squamous_cell_carcinoma")
    assert config.problem_type == "single_label_classification" and config.loss == "focal" and config.focal_gamma == 2
    assert tuple(MMCAFNetConfig(num_labels=4).id2label.values()) == ABEG_LABELS
    assert MMCAFNetConfig(bsf_mode="concat").fused_dim == 48 and MMCAFNetConfig().cross_attention_dims == [24, 12, 6]
    with pytest.raises(ValueError, match="loss"):
        MMCAFNetConfig(loss="bce")
    with pytest.raises(ValueError, match="cross_attention_tokens"):
        MMCAFNetConfig(cross_attention_tokens=5)
    with pytest.raises(ValueError, match="frozen_parts"):
        MMCAFNetConfig(frozen_parts=["classifier"])


# ------------------------------------------------------------------------------------------------ model


def test_shapes_per_stage_tiny_and_paper() -> None:
    model = tiny_model().eval()
    pixels, clinical = batch()
    with torch.no_grad():
        out = model.mmcaf_net(pixels, clinical, output_hidden_states=True, output_attentions=True)
    assert [tuple(h.shape) for h in out.hidden_states] == [
        (2, 8, 6, 8, 8),  # stem: conv stride (1, 2, 2) then max-pool /2
        (2, 16, 6, 8, 8),
        (2, 32, 3, 4, 4),
        (2, 64, 2, 2, 2),
    ]
    assert [tuple(h.shape) for h in out.pyramid_hidden_states] == [(2, 16, 6, 8, 8), (2, 32, 3, 4, 4), (2, 64, 2, 2, 2)]
    assert out.image_embedding.shape == out.table_embedding.shape == out.fused_embedding.shape == (2, 24)
    assert [tuple(v.shape) for v in out.scale_embeddings] == [(2, 24), (2, 12), (2, 6)]
    # 3 tokens per side: attention over 3 keys, not the trivial single-token softmax.
    assert tuple(out.cross_attentions[0].shape) == (2, 2, 3, 3)
    assert torch.allclose(out.cross_attentions[0].sum(-1), torch.ones(2, 2, 3))
    assert model(pixels, clinical).logits.shape == (2, 2)
    # The paper preset on [1, 1, 12, 192, 192], shapes only (meta device: no memory, no compute).
    with torch.device("meta"):
        paper = MMCAFNetForCTClassification(MMCAFNetConfig())
        out = paper.mmcaf_net(torch.empty(1, 1, 12, 192, 192), torch.empty(1, 7), output_hidden_states=True)
    assert [tuple(h.shape) for h in out.hidden_states[1:]] == [
        (1, 256, 6, 48, 48),
        (1, 512, 3, 24, 24),
        (1, 1024, 2, 12, 12),
    ]
    assert paper.mmcaf_net.image_encoder.projection.in_features == 1024
    assert paper.classifier.in_features == 24
    assert (
        MMCAFNetForCTClassification(MMCAFNetConfig.from_preset("tiny", bsf_mode="concat")).classifier.in_features == 48
    )


def test_inputs_are_checked() -> None:
    model = tiny_model().eval()
    pixels, clinical = batch()
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixels[:, 0], clinical)
    with pytest.raises(ValueError, match="clinical_values"):
        model(pixels, clinical[:, :6])
    with pytest.raises(ValueError, match="class indices"):
        model(pixels, clinical, labels=torch.tensor([0.0, 1.0]))


def _cubic_bspline(u: float) -> float:
    """The uniform cubic B-spline with support [0, 4) (closed form, independent of Cox-de Boor)."""
    if 0 <= u < 1:
        return u**3 / 6
    if 1 <= u < 2:
        return (-3 * u**3 + 12 * u**2 - 12 * u + 4) / 6
    if 2 <= u < 3:
        return (3 * u**3 - 24 * u**2 + 60 * u - 44) / 6
    if 3 <= u < 4:
        return (4 - u) ** 3 / 6
    return 0.0


def test_kan_b_splines() -> None:
    layer = KANLayer(3, 2, grid_size=5, spline_order=3, grid_range=(-1.0, 1.0)).double()
    x = torch.linspace(-1, 1, 41, dtype=torch.float64)[:, None].repeat(1, 3)
    bases = layer.b_splines(x)  # [41, 3, 8]
    assert bases.shape == (41, 3, 8)
    assert torch.allclose(bases.sum(-1), torch.ones(41, 3, dtype=torch.float64))  # partition of unity on [-1, 1]
    # At the knot x = -0.2 (grid step 0.4) exactly three cubic bases are non-zero: 1/6, 2/3, 1/6.
    at_knot = layer.b_splines(torch.tensor([[-0.2, -0.2, -0.2]], dtype=torch.float64))[0, 0]
    expected = torch.tensor([0, 0, 1 / 6, 2 / 3, 1 / 6, 0, 0, 0], dtype=torch.float64)
    assert torch.allclose(at_knot, expected)
    # The layer's output against a direct evaluation: SiLU base plus sum_m c_m B((x - t_m) / h).
    inputs = torch.tensor([[-0.93, 0.1, 0.77], [0.5, -0.35, 1.0]], dtype=torch.float64)
    knots = [-1 + 0.4 * (j - 3) for j in range(12)]
    with torch.no_grad():
        layer.spline_weight.normal_()
        output = layer(inputs)
    base, spline = layer.base_weight.detach(), layer.spline_weight.detach()
    for b in range(2):
        for o in range(2):
            value = 0.0
            for i in range(3):
                xi = float(inputs[b, i])
                value += float(base[o, i]) * xi / (1 + math.exp(-xi))
                value += sum(float(spline[o, i, m]) * _cubic_bspline((xi - knots[m]) / 0.4) for m in range(8))
            assert output[b, o].item() == pytest.approx(value, abs=1e-6)  # knots were built in float32


def test_softmax_focal_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.5, -0.5]])
    targets = torch.tensor([1, 0])
    p1 = 1 / (1 + math.exp(2.0))  # softmax prob of class 1 in row 0
    p0 = 1 / (1 + math.exp(-1.0))  # class 0 in row 1
    expected = ((1 - p1) ** 2 * -math.log(p1) + (1 - p0) ** 2 * -math.log(p0)) / 2
    assert SoftmaxFocalLoss(gamma=2.0)(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert SoftmaxFocalLoss(gamma=0.0)(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item())
    # Ignored targets (-100) are left out of the mean.
    kept_only = SoftmaxFocalLoss(gamma=2.0)(logits[:1], targets[:1])
    assert SoftmaxFocalLoss(gamma=2.0)(logits, torch.tensor([1, -100])).item() == pytest.approx(kept_only.item())


def test_frozen_encoder_stays_in_eval_and_its_statistics_do_not_drift(tmp_path: Path) -> None:
    model = tiny_model()
    model.set_frozen_parts(["image_encoder", "table_encoder"])
    encoder = model.mmcaf_net.image_encoder
    before = {name: buffer.clone() for name, buffer in encoder.named_buffers()}
    model.train()
    assert not encoder.training and all(not m.training for m in encoder.modules())
    assert model.mmcaf_net.fusion.training and model.classifier.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not any(p.requires_grad for p in model.mmcaf_net.table_encoder.parameters())
    pixels, clinical = batch(4)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    weights = {name: p.clone() for name, p in encoder.named_parameters()}
    for _ in range(2):
        model(pixels * 3 + 1, clinical, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
        optimizer.step()
    for name, buffer in encoder.named_buffers():
        assert torch.equal(buffer, before[name]), name  # BN running statistics and counters unchanged
    for name, param in encoder.named_parameters():
        assert torch.equal(param, weights[name]), name
    # Saved in the config and re-applied after loading.
    model.save_pretrained(tmp_path)
    reloaded = MMCAFNetForCTClassification.from_pretrained(tmp_path).train()
    assert reloaded.config.frozen_parts == ["image_encoder", "table_encoder"]
    assert not reloaded.mmcaf_net.image_encoder.training
    assert not any(p.requires_grad for p in reloaded.mmcaf_net.image_encoder.parameters())
    reloaded.set_frozen_parts([])
    assert reloaded.train().mmcaf_net.image_encoder.training


def test_classification_heads_select_the_embedding() -> None:
    pixels, clinical = batch()
    model = tiny_model(classification_head="image").eval()
    with torch.no_grad():
        out = model(pixels, clinical)
        assert torch.equal(out.logits, model.image_classifier(out.image_embedding))
        changed = model(pixels, -clinical)  # the image head ignores the table
    assert torch.equal(out.logits, changed.logits)


def test_save_load_exact_and_auto_classes(tmp_path: Path) -> None:
    model = tiny_model().eval()
    hf_cxr.build_image_processor("mmcaf_net", "tiny").save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    pixels, clinical = batch()
    reloaded = AutoModelForVideoClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is MMCAFNetForCTClassification
    with torch.no_grad():
        assert torch.equal(model(pixels, clinical).logits, reloaded(pixels, clinical).logits)
    assert type(AutoModel.from_pretrained(tmp_path)).__name__ == "MMCAFNetModel"
    assert type(AutoProcessor.from_pretrained(tmp_path)) is MMCAFNetProcessor
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForVideoClassification"] == "modeling_mmcaf_net.MMCAFNetForCTClassification"
    assert auto_map["AutoModel"] == "modeling_mmcaf_net.MMCAFNetModel"


REMOTE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.modules["hf_cxr"] = None  # `import hf_cxr` fails: everything must come from the saved remote code
    import numpy as np, torch
    from transformers import AutoModel, AutoModelForVideoClassification, AutoProcessor
    torch.set_num_threads(1)
    folder, series = sys.argv[1], sys.argv[2]
    model = AutoModelForVideoClassification.from_pretrained(folder, trust_remote_code=True).eval()
    assert not type(model).__module__.startswith("hf_cxr"), type(model).__module__
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(processor).__name__ == "MMCAFNetProcessor", type(processor)
    inputs = processor(series, clinical=np.load(os.path.join(folder, "clinical.npy")))
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"], clinical_values=inputs["clinical_values"]).logits
    expected = torch.from_numpy(np.load(os.path.join(folder, "logits.npy")))
    assert torch.equal(logits, expected), (logits, expected)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(base).__name__ == "MMCAFNetModel", type(base)
    print("ok", type(model).__module__)
    """
)


def test_remote_code_loads_without_hf_cxr(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = tiny_model().eval()
    processor = hf_cxr.build_image_processor("mmcaf_net", "tiny", num_slices=12)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for source in tmp_path.glob("*.py"):  # remote code imports only its own folder, never hf_cxr
        assert not re.search(r"^\s*(from|import)\s+hf_cxr", source.read_text(), re.MULTILINE), source.name
    clinical = np.array([-1.0, -0.05, 0.0, -0.5, 1 / 3, 1.0, -1.0])
    inputs = processor(SERIES_DIR, clinical=clinical)
    with torch.no_grad():
        logits = model(inputs["pixel_values"], inputs["clinical_values"]).logits
    np.save(tmp_path / "clinical.npy", clinical)
    np.save(tmp_path / "logits.npy", logits.numpy())
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(SERIES_DIR)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok transformers_modules" in result.stdout


# ------------------------------------------------------------------------------------------------ processor


def test_processor_reads_real_slices_in_z_order_in_hu() -> None:
    processor = tiny_processor()
    hu, uids = processor.read_dicom_series(sorted(str(p) for p in SERIES_DIR.glob("*.dcm")), str(SERIES_DIR))
    datasets = [pydicom.dcmread(SERIES_DIR / name) for name in FILES_BY_Z]
    assert uids == [str(d.SOPInstanceUID) for d in datasets]
    assert [float(d.ImagePositionPatient[2]) for d in datasets] == [216.0, 224.0, 232.0, 240.0, 248.0, 256.0]
    for index, dataset in enumerate(datasets):  # HU = stored - 1024 (slope 1, intercept -1024)
        assert np.array_equal(hu[index], dataset.pixel_array.astype(np.int16) - 1024)
    assert hu.shape == (6, 512, 512) and -1100 <= hu.min() < -900 and 200 < hu.max() < 3100


def test_lesion_centre_and_sliding_slabs() -> None:
    processor = tiny_processor(num_slices=3)
    hu, _ = processor.read_dicom_series([str(SERIES_DIR / name) for name in FILES_BY_Z], "fixture")
    # Boxes on sorted slices 0-4 (1-13 ... 1-09): a 3-slice slab centred on slice 2.
    from_xml = processor(SERIES_DIR, clinical=CLINICAL, annotations=ANNOTATIONS)
    assert from_xml["slab_start"].tolist() == [1]
    expected, _ = processor.volume_slabs(hu[1:4].astype(np.float32), slice_selection="center")
    assert torch.equal(from_xml["pixel_values"], expected)
    assert processor(SERIES_DIR, clinical=CLINICAL, lesion_slice_range=(4, 5))["slab_start"].tolist() == [3]
    assert processor(SERIES_DIR, clinical=CLINICAL, lesion_slice_range=(0, 0))["slab_start"].tolist() == [0]
    assert processor(SERIES_DIR, clinical=CLINICAL, slice_selection="center")["slab_start"].tolist() == [2]
    sliding = processor(SERIES_DIR, clinical=CLINICAL, slice_selection="sliding", slab_stride=2)
    assert sliding["slab_start"].tolist() == [0, 2, 3] and sliding["series_index"].tolist() == [0, 0, 0]
    assert torch.equal(sliding["clinical_values"][0], sliding["clinical_values"][2])


def test_short_series_is_padded_with_air_and_windowed() -> None:
    processor = tiny_processor(num_slices=8)
    out = processor(SERIES_DIR, clinical=CLINICAL)
    assert out["pixel_values"].shape == (1, 1, 8, 32, 32) and out["slab_start"].tolist() == [-1]
    air = ((-1000 - (-600 - 750)) / 1500 - 0.5) / 0.5  # lung window, then (x - 0.5) / 0.5
    for index in (0, 7):
        assert torch.allclose(out["pixel_values"][0, 0, index], torch.full((32, 32), air))
    assert out["pixel_values"].min() >= -1 and out["pixel_values"].max() <= 1


def test_all_input_kinds_give_the_same_pixels(tmp_path: Path) -> None:
    processor = tiny_processor()
    reference = processor(SERIES_DIR, clinical=CLINICAL, lesion_slice_range=(0, 4))
    files = [str(SERIES_DIR / name) for name in reversed(FILES_BY_Z)]  # order of files does not matter
    hu, _ = processor.read_dicom_series(files, "files")
    row = {
        "volume": hu,
        "lesion_slice_range": [0, 4],
        "sex": "F",
        "age": "58",
        "weight_kg": "NA",
        "t_stage": "1b",
        "n_stage": "2",
        "m_stage": "1a",
        "smoking_history": "0",
        "label": 0,
    }
    for kind in (
        processor(files, clinical=CLINICAL, lesion_slice_range=(0, 4)),
        processor(hu, clinical=CLINICAL, lesion_slice_range=(0, 4)),
        processor(torch.from_numpy(hu), clinical=CLINICAL, lesion_slice_range=(0, 4)),
        processor(row),
        processor({"series": SERIES_DIR, "clinical": CLINICAL, "lesion_slice_range": [0, 4]}),
    ):
        assert torch.equal(kind["pixel_values"], reference["pixel_values"])
        assert torch.equal(kind["clinical_values"], reference["clinical_values"])
    both = processor([row, {"series": SERIES_DIR, "clinical": CLINICAL}])
    assert both["series_index"].tolist() == [0, 1] and both["pixel_values"].shape[0] == 2
    with pytest.raises(ValueError, match="Hounsfield"):
        processor(np.random.rand(6, 32, 32), clinical=CLINICAL)


def _copy_series(target: Path, count: int = 3) -> list[Path]:
    target.mkdir(parents=True)
    return [Path(shutil.copy(SERIES_DIR / name, target / name)) for name in FILES_BY_Z[:count]]


def test_processor_errors_name_the_path(tmp_path: Path) -> None:
    processor = tiny_processor()
    mixed = _copy_series(tmp_path / "mixed series")
    dataset = pydicom.dcmread(mixed[0])
    uid = str(dataset.SeriesInstanceUID)
    dataset.SeriesInstanceUID = uid[:-1] + ("2" if uid[-1] == "1" else "1")  # another series, valid UI length
    dataset.save_as(mixed[0])
    with pytest.raises(ValueError, match=r"mixed series.*") as error:
        processor(tmp_path / "mixed series", clinical=CLINICAL)
    assert str(tmp_path / "mixed series") in str(error.value)

    no_pixels = _copy_series(tmp_path / "no pixels")
    dataset = pydicom.dcmread(no_pixels[1])
    del dataset.PixelData
    dataset.save_as(no_pixels[1])
    with pytest.raises(ValueError, match="pixel data") as error:
        processor(tmp_path / "no pixels", clinical=CLINICAL)
    assert str(no_pixels[1]) in str(error.value)

    sizes = _copy_series(tmp_path / "sizes")
    dataset = pydicom.dcmread(sizes[2])
    small = dataset.pixel_array[::2, ::2].copy()
    dataset.Rows, dataset.Columns = small.shape
    dataset.PixelData = small.tobytes()
    dataset.save_as(sizes[2])
    with pytest.raises(ValueError, match="inconsistent slice sizes") as error:
        processor(tmp_path / "sizes", clinical=CLINICAL)
    assert str(tmp_path / "sizes") in str(error.value)

    pet = _copy_series(tmp_path / "pet")
    for path in pet:
        dataset = pydicom.dcmread(path)
        dataset.Modality = "PT"
        dataset.save_as(path)
    with pytest.raises(ValueError, match=r"no CT slices \(modalities found: \['PT'\]\)"):
        processor(tmp_path / "pet", clinical=CLINICAL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no CT slices") as error:
        processor(tmp_path / "empty", clinical=CLINICAL)
    assert str(tmp_path / "empty") in str(error.value)
    with pytest.raises(ValueError, match="no clinical values"):
        processor(SERIES_DIR)


def test_clinical_encoding_rules_and_saved_statistics(tmp_path: Path) -> None:
    processor = tiny_processor()
    encoding = processor.encode_clinical(
        {"sex": "M", "age": 60, "weight": "80", "t_stage": "T2a", "n_stage": "N1", "m_stage": "M0", "smoking": "1"}
    )
    assert encoding.values == pytest.approx((1.0, 0.0, 0.0, 0.0, -1 / 3, -1.0, 1.0)) and encoding.missing == []
    tis = processor.encode_clinical({**CLINICAL, "T-Stage": "Tis", "N-Stage": "NX", "Smoking History": None})
    assert tis.values[3] == -1.0 and tis.missing == ["weight", "n_stage", "smoking"]
    assert tis.mask == (1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="T9"):
        processor.encode_clinical({**CLINICAL, "T-Stage": "T9"})
    lenient = tiny_processor(clinical_unknown="missing")
    out = lenient(SERIES_DIR, clinical={**CLINICAL, "T-Stage": "T9"})
    assert out["clinical_unknown"] == [["t_stage"]] and out["clinical_missing"] == [["weight"]]
    assert out["clinical_mask"][0].tolist() == [1, 1, 0, 0, 1, 1, 1]
    # Training-split statistics: ranges from the observed min/max, missing features filled with the mean.
    records = [
        {"sex": "M", "age": "50", "weight": "60", "t_stage": "1", "n_stage": "0", "m_stage": "0", "smoking": "1"},
        {"sex": "F", "age": "70", "weight": "80", "t_stage": "3", "n_stage": "2", "m_stage": "NA", "smoking": "0"},
        {"sex": "M", "age": "60", "weight": "NA", "t_stage": "2", "n_stage": "1", "m_stage": "1", "smoking": "1"},
    ]
    processor.fit_clinical_statistics(records)
    assert processor.clinical_age_range == [50.0, 70.0] and processor.clinical_weight_range == [60.0, 80.0]
    assert processor.clinical_fill_values[0] == pytest.approx(1 / 3)  # mean of +1, -1, +1
    assert processor.clinical_fill_values[2] == pytest.approx(0.0)  # weights 60 and 80 -> -1 and +1
    assert processor.clinical_fill_values[5] == pytest.approx(0.0)  # M0 and M1 observed
    filled = processor.encode_clinical({**records[0], "weight": "NA", "age": "65"})
    assert filled.values[1] == pytest.approx(0.5) and filled.values[2] == processor.clinical_fill_values[2]
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (
        saved["clinical_age_range"] == [50.0, 70.0] and saved["clinical_fill_values"] == processor.clinical_fill_values
    )
    assert (
        MMCAFNetProcessor.from_pretrained(tmp_path).encode_clinical(records[1]).values
        == processor.encode_clinical(records[1]).values
    )


# ------------------------------------------------------------------------------------------------ pipeline, training


def test_pipeline_returns_patient_level_max_over_slabs(tmp_path: Path) -> None:
    model = tiny_model().eval()
    processor = tiny_processor(num_slices=3)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    classify = pipeline(hf_cxr.CT_CLINICAL_TASK, model=str(tmp_path))
    assert type(classify) is hf_cxr.CTClinicalClassificationPipeline
    inputs = {"series": str(SERIES_DIR), "clinical": CLINICAL}
    details = classify(inputs, slice_selection="sliding", slab_stride=1, return_details=True)
    assert details["slab_start"] == [0, 1, 2, 3] and details["clinical_missing"] == ["weight"]
    slabs = processor(SERIES_DIR, clinical=CLINICAL, slice_selection="sliding", slab_stride=1)
    with torch.no_grad():
        probabilities = torch.softmax(model(slabs["pixel_values"], slabs["clinical_values"]).logits, dim=-1)
    scores = {entry["label"]: entry["score"] for entry in details["scores"]}
    for index, label in model.config.id2label.items():
        assert scores[label] == pytest.approx(probabilities[:, index].max().item(), abs=1e-6)
    mean = classify(inputs, slice_selection="sliding", slab_stride=1, aggregate="mean")
    assert sum(entry["score"] for entry in mean) == pytest.approx(1.0, abs=1e-5)
    assert len(classify(inputs)) == 2 and len(classify(inputs, top_k=1)) == 1
    with pytest.raises(ValueError, match="takes a dict"):
        classify(str(SERIES_DIR))


class _SyntheticCT(torch.utils.data.Dataset):
    """Slabs whose brightness and first clinical value tell the class (a learnable toy task)."""

    def __init__(self, count: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.labels = torch.arange(count) % 2
        self.pixels = (
            torch.randn(count, 1, 12, 32, 32, generator=generator) * 0.3 + self.labels[:, None, None, None, None]
        )
        self.clinical = torch.rand(count, 7, generator=generator) * 0.2
        self.clinical[:, 0] = self.labels * 2.0 - 1.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "pixel_values": self.pixels[index],
            "clinical_values": self.clinical[index],
            "labels": self.labels[index],
        }


def test_trainer_lowers_the_loss(tmp_path: Path) -> None:
    model = tiny_model(classifier_dropout=0.0)
    data = _SyntheticCT()
    stacked = {
        key: torch.stack([data[i][key] for i in range(len(data))])
        for key in ("pixel_values", "clinical_values", "labels")
    }

    def loss_now() -> float:
        # Batch statistics (train mode, no dropout configured): after a few steps the BN running averages still
        # lag the weights, so an eval-mode loss would measure the averages rather than the learning.
        model.train()
        with torch.no_grad():
            return model(**stacked).loss.item()

    before = loss_now()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=20,
        learning_rate=3e-3,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    after = loss_now()
    assert after < 0.5 * before, (before, after)
