"""Benchmarks: speed of the models and the data path (`speed`, `hf-cxr bench`, with
`model_speed`, `data_path`, `timing` and `speed_report`), what a configuration can learn on
simulated findings (`learnability`, `hf-cxr bench --learnability`) and the synthetic lesions behind it (`lesions`).
Nothing else in hf-cxr imports this package."""
