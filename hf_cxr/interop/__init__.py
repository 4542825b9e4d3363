"""Other libraries' trained weights as hf-cxr models: torchxrayvision's classifiers (`torchxrayvision`,
`hf-cxr import-torchxrayvision`)."""
