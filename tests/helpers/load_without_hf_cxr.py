"""Run in a fresh interpreter: load a saved hf-cxr model folder or Hub repo id, optionally with hf_cxr blocked.

Usage: python load_without_hf_cxr.py MODEL PIXELS.npy EXPECTED_LOGITS.npy IMAGE.png (block|import) THREADS

MODEL is a saved folder or a Hub repo id.

`block` makes `import hf_cxr` fail, as on a machine where only transformers is installed, so everything must
come from the saved remote code (`trust_remote_code=True`). `import` imports hf_cxr and passes no
`trust_remote_code`. THREADS is the caller's torch thread count: CPU reductions split over another number of
threads sum in another order, so bit-exact logits need the same count. Exits non-zero (with a message) when
any check fails.
"""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

source, pixels_path, logits_path, image_path, mode, threads = sys.argv[1:7]
if mode == "block":
    sys.modules["hf_cxr"] = None  # any `import hf_cxr` now raises ImportError
    trust = {"trust_remote_code": True}
else:
    import hf_cxr  # noqa: F401

    trust = {}

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline  # noqa: E402

torch.set_num_threads(int(threads))

model = AutoModelForImageClassification.from_pretrained(source, **trust).eval()
if mode == "block" and type(model).__module__.startswith("hf_cxr"):
    sys.exit(f"expected remote code, got {type(model).__module__}")
pixels = torch.from_numpy(np.load(pixels_path))
with torch.no_grad():
    logits = model(pixel_values=pixels).logits.numpy()
expected = np.load(logits_path)
if not np.array_equal(logits, expected):
    sys.exit(f"logits differ from the saved model's: max abs diff {np.abs(logits - expected).max()}")

processor = AutoImageProcessor.from_pretrained(source, **trust)
if type(processor).__name__ == "BaseImageProcessor" or "pixel_values" not in processor(image_path, return_tensors="pt"):
    sys.exit(f"unexpected image processor {type(processor)}")

base = AutoModel.from_pretrained(source, **trust)
if "ForImageClassification" in type(base).__name__:
    sys.exit(f"AutoModel gave the task model {type(base).__name__}")

classifier = pipeline("image-classification", model=source, **trust)
scores = classifier(image_path, top_k=model.config.num_labels)
if len(scores) != model.config.num_labels or abs(sum(s["score"] for s in scores) - 1.0) < 1e-3:
    sys.exit(f"pipeline scores are not per-finding sigmoids: {scores}")
print("ok", type(model).__module__)
