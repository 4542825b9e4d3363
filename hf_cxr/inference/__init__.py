"""Using a trained model: findings and Grad-CAM pictures (`predict`, `explain`), the pipeline tasks hf-cxr registers
(`pipelines`), CT slab prediction shared by training and evaluation (`ct`), and ONNX export (`onnx_export`)."""
