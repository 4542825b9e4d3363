"""The 2D image processor reads every supported input faithfully and refuses bad input with a clear error."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import NIH_DIR
from hf_cxr.modeling.common.image_processing_cxr import IMAGENET_MEAN, IMAGENET_STD
from hf_cxr.modeling.common.imaging import describe
from PIL import ExifTags, Image, ImageOps
from transformers import pipeline
from transformers.image_utils import load_image

import hf_cxr
from hf_cxr.imaging import load_radiograph

FULLRES = NIH_DIR / "00000493_000_fullres.png"


@pytest.fixture
def processor():
    return hf_cxr.CRMSNetImageProcessor(size=64)


@pytest.fixture
def grey(nih_images) -> np.ndarray:
    """A real radiograph as uint8 [256, 256]."""
    return np.asarray(Image.open(nih_images[0]))


def unnormalise(pixel_values: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    return pixel_values * std + mean


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements) -> Path:
    """A minimal valid DICOM Part 10 radiograph written with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12
    dataset.HighBit = 11
    dataset.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_output_shape_dtype_and_normalisation(processor, nih_images) -> None:
    out = processor([str(p) for p in nih_images[:3]], return_tensors="pt")["pixel_values"]
    assert out.shape == (3, 3, 64, 64) and out.dtype == torch.float32
    restored = unnormalise(out)
    assert torch.allclose(restored[:, 0], restored[:, 1], atol=1e-6)  # grey repeated to every channel
    assert restored.min() >= -1e-6 and restored.max() <= 1 + 1e-6
    assert isinstance(processor(str(nih_images[0]))["pixel_values"], np.ndarray)  # no return_tensors: numpy


def test_real_full_resolution_nih_png(processor) -> None:
    grey = load_radiograph(FULLRES)
    assert grey.shape == (1024, 1024) and grey.dtype == np.float32
    assert np.array_equal(grey, np.asarray(Image.open(FULLRES), dtype=np.float32) / 255)
    out = processor(str(FULLRES), return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 64, 64) and out.std() > 0.1


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "I;16", "I"])
def test_pil_modes_give_the_same_grey_image(grey, mode) -> None:
    expected = grey.astype(np.float32) / 255
    if mode in ("I;16", "I"):
        image = Image.fromarray(grey.astype(np.uint16) * 257)
        image = image if mode == "I;16" else image.convert("I")
    else:
        image = Image.fromarray(grey).convert(mode)
    np.testing.assert_allclose(load_radiograph(image), expected, atol=1e-6)


def test_numpy_and_torch_inputs(grey) -> None:
    expected = grey.astype(np.float32) / 255
    np.testing.assert_allclose(load_radiograph(grey), expected)
    np.testing.assert_allclose(load_radiograph(grey[..., None]), expected)  # H x W x 1
    np.testing.assert_allclose(load_radiograph(np.repeat(grey[..., None], 3, axis=2)), expected)  # H x W x 3
    np.testing.assert_allclose(load_radiograph(grey.astype(np.uint16) * 257), expected, atol=1e-6)
    np.testing.assert_allclose(load_radiograph(expected), expected)  # floats in [0, 1] are used as they are
    tensor = torch.from_numpy(expected).expand(3, -1, -1)  # torch: channels first
    np.testing.assert_allclose(load_radiograph(tensor), expected)


def test_wide_integer_types_are_scaled_by_their_values(processor, grey) -> None:
    """Only uint8 and uint16 say their bit depth; other integers: values within 0..255 are 8-bit, else 16-bit."""
    eight_bit = processor(grey, return_tensors="pt")["pixel_values"]
    for same in (
        grey.astype(np.int64),
        grey.astype(np.int32),
        torch.from_numpy(grey.astype(np.int64)),
        Image.fromarray(grey).convert("I"),  # PIL mode I (32-bit) holding 8-bit values
    ):
        assert torch.equal(processor(same, return_tensors="pt")["pixel_values"], eight_bit), describe(same)
    sixteen = grey.astype(np.uint16) * 257
    expected = processor(sixteen, return_tensors="pt")["pixel_values"]
    assert torch.equal(processor(sixteen.astype(np.int32), return_tensors="pt")["pixel_values"], expected)
    assert torch.equal(
        processor(Image.fromarray(sixteen.astype(np.int32)), return_tensors="pt")["pixel_values"], expected
    )


def test_a_dark_sixteen_bit_png_stays_sixteen_bit(tmp_path) -> None:
    """The file states its bit depth: a 16-bit PNG whose values all lie below 256 is not read as 8-bit."""
    dark = np.tile(np.arange(200, dtype=np.uint16), (8, 1))
    path = tmp_path / "dark16.png"
    Image.fromarray(dark).save(path)
    for source in (path, path.read_bytes(), Image.open(path)):
        np.testing.assert_allclose(load_radiograph(source), dark / 65535, atol=1e-9)


def test_wide_integer_values_outside_16_bits_are_refused(processor, grey) -> None:
    with pytest.raises(ValueError, match="negative"):
        processor(grey.astype(np.int64) - 1)
    with pytest.raises(ValueError, match="65535"):
        processor(grey.astype(np.int64) * 1000)


def test_a_datasets_column_is_a_batch(processor, nih_images) -> None:
    paths = [str(path) for path in nih_images[:3]]
    column = datasets.Dataset.from_dict({"image": paths}).cast_column("image", datasets.Image())["image"]
    assert not isinstance(column, (list, tuple))  # a lazy Column, not a list
    out = processor(column, return_tensors="pt")["pixel_values"]
    assert torch.equal(out, processor(paths, return_tensors="pt")["pixel_values"])


def sideways_jpeg(path: Path, upright: Image.Image) -> Path:
    """`upright` stored rotated, with EXIF Orientation 6 ("rotate 90 degrees clockwise to display")."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    return path


def test_exif_orientation_is_applied_whatever_the_path(processor, grey, tmp_path) -> None:
    upright = Image.fromarray(grey[:, :200])  # 200 wide, 256 high
    path = sideways_jpeg(tmp_path / "sideways.jpg", upright)
    assert Image.open(path).size == (256, 200)  # stored sideways
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)), dtype=np.float32) / 255
    assert expected.shape == (256, 200)
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        np.testing.assert_array_equal(load_radiograph(source), expected)
    assert np.abs(expected - np.asarray(upright) / 255).mean() < 0.01  # upright, up to JPEG loss
    # The processor gives what transformers' load_image and the datasets Image feature give.
    processor = hf_cxr.CRMSNetImageProcessor(size=64, resize_mode="pad")
    direct = processor(str(path), return_tensors="pt")["pixel_values"]
    assert torch.equal(direct, processor(load_image(str(path)), return_tensors="pt")["pixel_values"])
    column = datasets.Dataset.from_dict({"image": [str(path)]}).cast_column("image", datasets.Image())["image"]
    assert torch.equal(direct, processor(column, return_tensors="pt")["pixel_values"])


def test_three_channel_float_tensors_with_do_rescale_false(processor, grey) -> None:
    """What LibAUC-style code passes: float [3, H, W] in [0, 1] and do_rescale=False."""
    tensor = torch.from_numpy(grey.astype(np.float32) / 255).expand(3, -1, -1)
    from_tensor = processor(tensor, do_rescale=False, return_tensors="pt")["pixel_values"]
    from_uint8 = processor(grey, return_tensors="pt")["pixel_values"]
    assert torch.allclose(from_tensor, from_uint8, atol=1e-6)
    batch = processor(torch.stack([tensor, tensor]), do_rescale=False, return_tensors="pt")["pixel_values"]
    assert batch.shape == (2, 3, 64, 64)


def test_sixteen_bit_png_keeps_its_precision(tmp_path, processor) -> None:
    ramp = np.tile(np.linspace(0, 65535, 512).astype(np.uint16), (512, 1))
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    grey = load_radiograph(path)
    np.testing.assert_allclose(grey, ramp.astype(np.float32) / 65535, atol=1e-7)
    assert np.unique(grey).size > 256  # more levels than 8 bits could hold
    # Through a pipeline too: the hf-cxr task reads the path with the processor, not an 8-bit RGB loader.
    model = hf_cxr.build_model("cr_msnet", preset="tiny").eval()
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    scores = pipeline(hf_cxr.CXR_TASK, model=str(tmp_path / "model"))(str(path))
    with torch.no_grad():
        expected = torch.sigmoid(model(pixel_values=processor(ramp, return_tensors="pt")["pixel_values"]).logits)[0]
    got = {item["label"]: item["score"] for item in scores}
    assert torch.allclose(torch.tensor([got[model.config.id2label[i]] for i in range(14)]), expected, atol=1e-6)


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_from_a_real_image(tmp_path, grey, photometric) -> None:
    stored = grey.astype(np.uint16) * 16  # 12-bit radiograph
    if photometric == "MONOCHROME1":
        stored = 4095 - stored
    path = write_dicom(tmp_path / "cxr.dcm", stored, photometric)
    grey_out = load_radiograph(path)
    # No window: the stored range is stretched to [0, 1]; MONOCHROME1 is inverted so bright = dense again.
    reference = grey.astype(np.float64)
    reference = (reference - reference.min()) / (reference.max() - reference.min())
    np.testing.assert_allclose(grey_out, reference, atol=1e-6)
    np.testing.assert_allclose(load_radiograph(path.read_bytes()), grey_out)  # bytes
    import pydicom

    np.testing.assert_allclose(load_radiograph(pydicom.dcmread(path)), grey_out)  # pydicom.Dataset


def test_dicom_rescale_and_window(tmp_path, grey) -> None:
    stored = grey.astype(np.uint16) * 16
    path = write_dicom(
        tmp_path / "windowed.dcm", stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=2000, WindowWidth=2000
    )
    values = stored.astype(np.float64) * 2 - 100
    expected = np.clip((values - (2000 - 0.5)) / (2000 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(load_radiograph(path), expected, atol=1e-6)


RAMP_12_BIT = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # stored value v at flat index v
PROBES = [1028, 1606, 2569, 3083]


def test_dicom_sigmoid_window_is_applied_as_the_dicom_sigmoid(tmp_path) -> None:
    path = write_dicom(
        tmp_path / "sigmoid.dcm", RAMP_12_BIT, WindowCenter=2048, WindowWidth=1000, VOILUTFunction="SIGMOID"
    )
    grey = load_radiograph(path).ravel()
    expected = 1.0 / (1.0 + np.exp(-4.0 * (np.asarray(PROBES) - 2048.0) / 1000.0))  # PS3.3 C.11.2.1.3.1
    np.testing.assert_allclose(grey[PROBES], expected, atol=1e-6)
    np.testing.assert_allclose(grey[PROBES], [0.017, 0.146, 0.889, 0.984], atol=1e-3)
    import pydicom
    from pydicom.pixels import apply_voi_lut

    dataset = pydicom.dcmread(path)
    np.testing.assert_allclose(grey, apply_voi_lut(dataset.pixel_array, dataset).ravel() / 4095, atol=1e-6)


def test_dicom_linear_exact_window_and_voi_lut_sequence(tmp_path) -> None:
    exact = write_dicom(
        tmp_path / "exact.dcm", RAMP_12_BIT, WindowCenter=2048, WindowWidth=1000, VOILUTFunction="LINEAR_EXACT"
    )
    expected = np.clip((np.arange(4096) - 2048.0) / 1000.0 + 0.5, 0, 1)  # PS3.3 C.11.2.1.3.2
    np.testing.assert_allclose(load_radiograph(exact).ravel(), expected, atol=1e-6)
    from pydicom.dataset import Dataset

    curve = np.round(65535 * (np.arange(4096) / 4095) ** 0.5).astype("<u2")  # a square-root curve
    lut = Dataset()
    lut.add_new("LUTDescriptor", "US", [4096, 0, 16])
    lut.add_new("LUTData", "OW", curve.tobytes())  # OW: read back with the file's byte order
    # A VOI LUT wins over a window (PS3.3 C.11.2); its output is 16-bit here (LUTDescriptor's third value).
    path = write_dicom(tmp_path / "lut.dcm", RAMP_12_BIT, VOILUTSequence=[lut], WindowCenter=100, WindowWidth=10)
    np.testing.assert_allclose(load_radiograph(path).ravel(), curve / 65535, atol=1e-6)


def test_dicom_present_but_empty_attributes(tmp_path) -> None:
    from pydicom.dataset import Dataset

    plain = load_radiograph(write_dicom(tmp_path / "plain.dcm", RAMP_12_BIT))
    windowed = load_radiograph(write_dicom(tmp_path / "window.dcm", RAMP_12_BIT, WindowCenter=2048, WindowWidth=1000))
    # Empty Rescale Slope/Intercept: the identity, as when absent.
    empty_rescale = write_dicom(tmp_path / "rescale.dcm", RAMP_12_BIT, RescaleSlope=None, RescaleIntercept=None)
    np.testing.assert_allclose(load_radiograph(empty_rescale), plain)
    # An empty VOI LUT Sequence item: the next VOI source, the window.
    empty_lut = write_dicom(
        tmp_path / "lut.dcm", RAMP_12_BIT, VOILUTSequence=[Dataset()], WindowCenter=2048, WindowWidth=1000
    )
    np.testing.assert_allclose(load_radiograph(empty_lut), windowed)
    # An empty window (both values): no VOI transform, as when absent.
    empty_window = write_dicom(tmp_path / "empty.dcm", RAMP_12_BIT, WindowCenter=None, WindowWidth=None)
    np.testing.assert_allclose(load_radiograph(empty_window), plain)
    # Half a window cannot be applied and is not guessed.
    half = write_dicom(tmp_path / "half.dcm", RAMP_12_BIT, WindowCenter=2048, WindowWidth=None)
    with pytest.raises(ValueError, match=r"half\.dcm.*WindowWidth"):
        load_radiograph(half)
    narrow = write_dicom(tmp_path / "narrow.dcm", RAMP_12_BIT, WindowCenter=2048, WindowWidth=0.5)
    with pytest.raises(ValueError, match=r"narrow\.dcm.*Window Width"):
        load_radiograph(narrow)


def test_dicom_errors_name_the_file(tmp_path, grey) -> None:
    ct = write_dicom(tmp_path / "ct.dcm", grey.astype(np.uint16), Modality="CT")
    with pytest.raises(ValueError, match=r"ct\.dcm.*modality CT"):
        load_radiograph(ct)
    frames = write_dicom(tmp_path / "frames.dcm", grey.astype(np.uint16), NumberOfFrames=2)
    with pytest.raises(ValueError, match=r"frames\.dcm.*multi-frame"):
        load_radiograph(frames)
    import pydicom

    no_pixels = pydicom.dcmread(frames)
    del no_pixels.PixelData
    no_pixels.save_as(tmp_path / "report.dcm")
    with pytest.raises(ValueError, match=r"report\.dcm.*no pixel data"):
        load_radiograph(tmp_path / "report.dcm")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes((tmp_path / "ct.dcm").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated\.dcm"):
        load_radiograph(truncated)


@pytest.mark.parametrize(
    ("bad_input", "message"),
    [
        (np.zeros((0, 10), dtype=np.uint8), "empty"),
        (np.full((8, 8), np.nan, dtype=np.float32), "NaN"),
        (np.full((8, 8), np.inf, dtype=np.float32), "NaN or infinite"),
        (np.zeros((8, 8, 2), dtype=np.uint8), "channels"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "channels"),
        (np.full((8, 8), 255.0, dtype=np.float32), r"\[0, 1\]"),
        (b"this is not an image", "not a readable image"),
        (b"", "empty"),
        (12345, "unsupported input type"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_input(processor, bad_input, message) -> None:
    with pytest.raises(ValueError, match=message) as error:
        processor([np.zeros((8, 8), dtype=np.uint8), bad_input])
    assert "image 1" in str(error.value)  # the position in the batch is named


def test_missing_and_corrupt_files_are_named(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"nowhere\.png.*no such file"):
        load_radiograph(tmp_path / "nowhere.png")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(FULLRES.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"corrupt\.png"):
        load_radiograph(corrupt)


def test_resize_modes_keep_or_stretch_the_aspect_ratio() -> None:
    tall = np.zeros((200, 100), dtype=np.uint8)
    tall[:, :] = 255
    padded = hf_cxr.CRMSNetImageProcessor(size=50, resize_mode="pad", do_normalize=False)(tall)["pixel_values"][0, 0]
    assert padded[:, :12].max() == 0 and padded[:, 13:37].min() > 0.99  # black bars left and right
    cropped = hf_cxr.CRMSNetImageProcessor(size=50, resize_mode="center_crop", do_normalize=False)(tall)
    assert cropped["pixel_values"].min() > 0.99
    with pytest.raises(ValueError, match="resize_mode"):
        hf_cxr.CRMSNetImageProcessor(resize_mode="zoom")


def test_processor_save_and_load_round_trip(tmp_path) -> None:
    processor = hf_cxr.CRMSNetImageProcessor(size={"height": 96, "width": 80}, resize_mode="pad")
    processor.save_pretrained(tmp_path)
    reloaded = hf_cxr.CRMSNetImageProcessor.from_pretrained(tmp_path)
    assert reloaded.size == {"height": 96, "width": 80} and reloaded.resize_mode == "pad"
    image = np.asarray(Image.open(io.BytesIO(FULLRES.read_bytes())))
    assert np.array_equal(processor(image)["pixel_values"], reloaded(image)["pixel_values"])
