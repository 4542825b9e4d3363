"""Make docs/images/predict_example.png: `hf-cxr predict` output for one bundled NIH radiograph.

The model is a tiny CR-MSNet trained here for about a minute on CPU to detect a bright square planted at a fixed
place in 64 bundled NIH images (the same images without the square are the negatives). It is a demo of the
heatmap machinery, not a diagnostic model: its only "finding" is the planted square. The pictured image is a
bundled NIH radiograph it was not trained on, with the square planted.

    python docs/make_predict_example.py
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from hf_cxr.benchmarks.lesions import insert_square, train_planted_signal_model
from hf_cxr.imaging import load_radiograph
from hf_cxr.inference.predict import format_results, predict
from hf_cxr.registry import load_model
from hf_cxr.sample import SAMPLE_DIR

OUTPUT = Path(__file__).parent / "images" / "predict_example.png"
SQUARE = (36, 36, 60, 60)  # (x0, y0, x1, y1) of the planted square in a 128-px image


def plant(grey: np.ndarray) -> np.ndarray:
    return insert_square(grey, SQUARE, at_least=0.95).image


def main() -> None:
    images = sorted((SAMPLE_DIR / "images").glob("*.png"))
    train, shown = [load_radiograph(path) for path in images[:64]], images[100]
    model, processor = train_planted_signal_model(train, plant, label="Planted square", image_size=128)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "model"
        model.eval().save_pretrained(folder)
        processor.save_pretrained(folder)
        radiograph = Path(work) / f"{shown.stem}_with_square.png"
        Image.fromarray(np.round(plant(load_radiograph(shown)) * 255).astype(np.uint8)).save(radiograph)
        loaded, loaded_processor = load_model(folder, device="cpu")
        results = predict(loaded, loaded_processor, [radiograph], out_dir=Path(work) / "out", top_k=1)
        print(format_results(results))
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results[0].heatmap, OUTPUT)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
