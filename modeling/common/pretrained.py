"""Behaviour every hf-cxr `PreTrainedModel` shares: remote-code auto_map and bit-exact reloading."""

from __future__ import annotations

from typing import Any, ClassVar

import torch


class CXRPreTrainedMixin:
    """Mixed into each architecture's `PreTrainedModel` subclass (before `PreTrainedModel`)."""

    # Name of the architecture's features-only class, listed in the saved auto_map as `AutoModel`.
    base_model_class_name: ClassVar[str]

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        # The auto_map written for remote code only names the class being saved; add the base model so that
        # `AutoModel.from_pretrained(repo, trust_remote_code=True)` also works for a saved classifier.
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            entry = {"AutoModel": f"{module}.{self.base_model_class_name}"}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **entry}
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        # Weights come back as views into the safetensors file at arbitrary byte offsets; CPU kernels pick
        # different summation orders for unaligned memory, so logits would differ from the saved model in the
        # last bits. Owning freshly allocated (aligned) copies makes reloading bit-exact.
        model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        with torch.no_grad():
            for tensor in [*loaded.parameters(), *loaded.buffers()]:
                tensor.data = tensor.data.clone()
        return model
