"""Training recipes (YAML), shipped inside the package as `hf_cxr.recipes_data`; see `hf_cxr.training.config`."""
