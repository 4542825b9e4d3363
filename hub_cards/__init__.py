"""Card templates (model and dataset), installed as package data `hf_cxr.hub_cards` (see pyproject.toml)."""
