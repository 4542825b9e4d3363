"""MA-MSF: the momentum anchor (EMA rule, ownership of its tensors, eval-mode BN, save/load, Trainer callback,
DDP consistency) and the model's forward contract, on the tiny preset."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hf_cxr.modeling.ma_msf import MAMSFConfig, MAMSFForImageClassification
from safetensors import safe_open
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

import hf_cxr
from hf_cxr.callbacks import AnchorUpdateCallback, find_anchor_update

SCOPES = ["final_expansion", "last_stage"]


def tiny(**overrides) -> MAMSFForImageClassification:
    return MAMSFForImageClassification(MAMSFConfig.from_preset("tiny", **overrides))


def batch(size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(size, 3, 64, 64, generator=generator)
    labels = (torch.rand(size, 14, generator=generator) < 0.3).float()
    return pixels, labels


def anchor_and_online(model: MAMSFForImageClassification) -> tuple[dict, dict]:
    """(anchor state, online state) keyed alike: parameters and buffers of the anchored layers."""
    anchor = model.ma_msf.anchor.layers.state_dict()
    online = model.ma_msf._online_head().state_dict()
    assert anchor.keys() == online.keys()
    return anchor, online


def train_step(model: MAMSFForImageClassification, lr: float = 0.5, seed: int = 0) -> None:
    """One SGD step in train mode: moves the online weights and BN running statistics, never the anchor."""
    model.train()
    pixels, labels = batch(seed=seed)
    model.zero_grad()
    model(pixel_values=pixels, labels=labels).loss.backward()
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param -= lr * param.grad


def test_presets_build_through_the_package_entry_points(nih_images: list[Path]) -> None:
    model = hf_cxr.build_model("ma_msf", preset="tiny")
    assert isinstance(model, MAMSFForImageClassification)
    assert model.config.problem_type == "multi_label_classification"
    assert [model.config.id2label[i] for i in range(14)] == list(hf_cxr.CHESTXRAY14_LABELS)
    processor = hf_cxr.build_image_processor("ma_msf", preset="tiny")
    pixels = processor([str(path) for path in nih_images[:2]], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 64, 64)
    paper = hf_cxr.build_config("ma_msf", "paper")
    assert (paper.backbone, paper.image_size, paper.anchor_momentum) == ("efficientnetv2_s", 224, 0.999)
    assert paper.anchor_scope == "final_expansion" and paper.fusion_kernels == [1, 3, 5]
    assert hf_cxr.build_image_processor("ma_msf").size == {"height": 224, "width": 224}


@pytest.mark.parametrize(
    "field", [{"anchor_scope": "all"}, {"anchor_momentum": 1.5}, {"fusion": "max"}, {"fusion_kernels": [1, 4]}]
)
def test_config_rejects_unknown_choices(field: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(field))):
        MAMSFConfig(**field)


@pytest.mark.parametrize("fusion", ["concat", "sum"])
@pytest.mark.parametrize("scope", SCOPES)
def test_forward_shapes(scope: str, fusion: str) -> None:
    model = tiny(anchor_scope=scope, fusion=fusion).eval()
    pixels, labels = batch(3)
    features = model.ma_msf(pixels)
    channels = model.ma_msf.backbone.num_features
    assert features.online_features.shape == features.anchor_features.shape == (3, channels, 2, 2)
    assert features.last_hidden_state.shape == (3, model.config.fusion_dim, 2, 2)
    assert features.pooler_output.shape == (3, model.config.fusion_dim)
    output = model(pixel_values=pixels, labels=labels)
    assert output.logits.shape == (3, 14) and output.loss.ndim == 0
    loss, logits = model(pixel_values=pixels, labels=labels, return_dict=False)
    assert torch.equal(logits, output.logits) and torch.equal(loss, output.loss)


def test_bad_inputs_raise_value_errors() -> None:
    model = tiny()
    for shape in [(3, 64, 64), (2, 1, 64, 64), (2, 4, 64, 64)]:
        with pytest.raises(ValueError, match="pixel_values"):
            model(pixel_values=torch.randn(*shape))
    with pytest.raises(ValueError, match="labels"):
        model(pixel_values=torch.randn(2, 3, 64, 64), labels=torch.zeros(2, 13))


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_residual_makes_every_residual_block_start_as_the_identity(zero_init: bool) -> None:
    """A randomly initialised full-depth EfficientNetV2-S learned nothing in 500 learnability-benchmark steps; with
    each residual block starting as the identity it learned the effusion (docs/benchmarks.md)."""
    model = tiny(zero_init_residual=zero_init).eval()
    blocks = [module for module in model.ma_msf.backbone.modules() if getattr(module, "has_skip", False)]
    assert len(blocks) == 2  # the tiny preset's two blocks with a skip connection
    seen = []  # (input, output) of each residual block in one forward pass
    hooks = [block.register_forward_hook(lambda _, args, output: seen.append((args[0], output))) for block in blocks]
    with torch.no_grad():
        model(pixel_values=batch()[0])
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2
    assert all(torch.equal(block_input, block_output) == zero_init for block_input, block_output in seen)


@pytest.mark.parametrize("scope", SCOPES)
def test_anchor_starts_as_an_exact_copy_that_owns_its_tensors(scope: str) -> None:
    model = tiny(anchor_scope=scope)
    anchor, online = anchor_and_online(model)
    assert all(torch.equal(anchor[name], online[name]) for name in anchor)
    online_storages = {tensor.untyped_storage().data_ptr() for tensor in model.ma_msf.backbone.state_dict().values()}
    assert not online_storages & {tensor.untyped_storage().data_ptr() for tensor in anchor.values()}
    assert not any(param.requires_grad for param in model.ma_msf.anchor.parameters())
    assert any(param.requires_grad for param in model.ma_msf.backbone.parameters())


@pytest.mark.parametrize("scope", SCOPES)
def test_update_anchor_is_the_hand_computed_ema(scope: str) -> None:
    # zero_init_residual off: a zeroed residual scale passes no gradient to its branch, whose weights would then stay
    # put in the one training step, and this test checks that every anchored weight moves.
    model = tiny(anchor_scope=scope, anchor_momentum=0.9, zero_init_residual=False)
    train_step(model)
    anchor_before, online = (dict((n, t.clone()) for n, t in state.items()) for state in anchor_and_online(model))
    model.update_anchor()
    anchor, _ = anchor_and_online(model)
    params = {name for name, _ in model.ma_msf.anchor.layers.named_parameters()}
    for name in anchor:
        if name in params:
            expected = 0.9 * anchor_before[name] + 0.1 * online[name]
            torch.testing.assert_close(anchor[name], expected, rtol=1e-6, atol=1e-7)
            assert not torch.equal(anchor[name], anchor_before[name]) and not torch.equal(anchor[name], online[name])
        else:  # BN running statistics are copied, not averaged
            assert torch.equal(anchor[name], online[name])
    # An explicit momentum overrides the config's: a second step at 0.5 from the new state.
    previous = {name: tensor.clone() for name, tensor in anchor.items()}
    model.update_anchor(momentum=0.5)
    for name in params:
        torch.testing.assert_close(anchor[name], 0.5 * previous[name] + 0.5 * online[name], rtol=1e-6, atol=1e-7)


def test_momentum_one_never_moves_and_zero_copies_the_online_block() -> None:
    frozen = tiny(anchor_momentum=1.0)
    initial = {name: tensor.clone() for name, tensor in anchor_and_online(frozen)[0].items()}
    for seed in range(2):
        train_step(frozen, seed=seed)
        frozen.update_anchor()
    anchor, online = anchor_and_online(frozen)
    assert all(torch.equal(anchor[name], initial[name]) for name in anchor)
    assert not torch.equal(online["conv_head.weight"], initial["conv_head.weight"])

    follower = tiny(anchor_scope="last_stage", anchor_momentum=0.0)
    train_step(follower)
    follower.update_anchor()
    anchor, online = anchor_and_online(follower)
    assert all(torch.equal(anchor[name], online[name]) for name in anchor)


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_anchor_gets_no_gradient_and_its_input_gradient_is_configurable(stop_gradient: bool) -> None:
    torch.manual_seed(0)
    model = tiny(anchor_stop_gradient=stop_gradient).eval()  # eval: no dropout, so both runs are comparable
    pixels, labels = batch()
    model(pixel_values=pixels, labels=labels).loss.backward()
    assert all(param.grad is None for param in model.ma_msf.anchor.parameters())
    trunk_grad = model.ma_msf.backbone.conv_stem.weight.grad.clone()  # reached by the anchor path via the skips
    # The same model with the anchor's contribution blocked at its input: the trunk gradient equals this
    # only when the anchor path already contributes nothing (stop_gradient=True).
    model.zero_grad()
    model.config.anchor_stop_gradient = True
    model(pixel_values=pixels, labels=labels).loss.backward()
    detached_grad = model.ma_msf.backbone.conv_stem.weight.grad
    assert torch.equal(trunk_grad, detached_grad) is stop_gradient


def test_anchor_bn_stays_in_eval_mode_during_training() -> None:
    model = tiny()
    train_step(model)
    model.update_anchor(momentum=0.0)
    model.train()
    assert model.training and model.ma_msf.backbone.training and not model.ma_msf.anchor.training
    statistics = {name: b.clone() for name, b in model.ma_msf.anchor.named_buffers()}
    hidden = torch.randn(4, model.ma_msf.backbone.conv_head.in_channels, 2, 2)
    with torch.no_grad():
        alone, together = model.ma_msf.anchor(hidden[:1]), model.ma_msf.anchor(hidden)
        online = model.ma_msf._online_head()
        online_alone, online_together = online(hidden[:1]), online(hidden)
    # The online BN normalises with batch statistics, the anchor's BN with its copied running statistics.
    assert not torch.allclose(online_alone[0], online_together[0])
    torch.testing.assert_close(alone[0], together[0])
    assert all(torch.equal(b, statistics[name]) for name, b in model.ma_msf.anchor.named_buffers())


@pytest.mark.parametrize("scope", SCOPES)
def test_save_and_load_keep_the_anchor_exactly(scope: str, tmp_path: Path) -> None:
    model = tiny(anchor_scope=scope, anchor_momentum=0.5)
    train_step(model)
    model.update_anchor()  # now the anchor differs from both the online block and a fresh copy of it
    anchor, online = anchor_and_online(model)
    assert not torch.equal(anchor["conv_head.weight"], online["conv_head.weight"])
    model.eval()
    pixels, _ = batch(2, seed=1)
    with torch.no_grad():
        before = model(pixel_values=pixels).logits
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as saved:
        assert "ma_msf.anchor.layers.conv_head.weight" in set(saved.keys())
    reloaded = MAMSFForImageClassification.from_pretrained(tmp_path).eval()
    reloaded_anchor, _ = anchor_and_online(reloaded)
    assert all(torch.equal(reloaded_anchor[name], anchor[name]) for name in anchor)
    assert not any(param.requires_grad for param in reloaded.ma_msf.anchor.parameters())
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=pixels).logits, before)


class RandomImages(Dataset):
    def __init__(self, size: int) -> None:
        self.pixels, self.labels = batch(size, seed=3)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


def test_trainer_callback_updates_once_per_optimizer_step(tmp_path: Path) -> None:
    model = tiny(anchor_momentum=0.5)
    initial_anchor = model.ma_msf.anchor.layers.conv_head.weight.clone()
    real_update = model.update_anchor
    steps_at_call: list[int] = []

    def counting_update(momentum: float | None = None) -> None:
        steps_at_call.append(trainer.state.global_step)
        real_update(momentum)

    model.update_anchor = counting_update
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3,
        learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, seed=0, dataloader_num_workers=0,
        disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=RandomImages(16), callbacks=[AnchorUpdateCallback()])
    trainer.train()
    # 3 optimizer steps from 6 micro-batches: one update after each step, none after a micro-batch.
    assert steps_at_call == [1, 2, 3] == list(range(1, trainer.state.global_step + 1))
    assert not torch.equal(model.ma_msf.anchor.layers.conv_head.weight, initial_anchor)


def test_callback_refuses_a_model_without_an_anchor(tmp_path: Path) -> None:
    model = hf_cxr.build_model("cr_msnet", preset="tiny")
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=RandomImages(2), callbacks=[AnchorUpdateCallback()])
    with pytest.raises(ValueError, match="update_anchor"):
        trainer.train()


def test_anchor_update_through_a_lora_wrapper() -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny(anchor_scope="last_stage", anchor_momentum=0.0)
    targets = list(hf_cxr.ARCHITECTURES["ma_msf"].lora_target_modules)
    lora = get_peft_model(model, LoraConfig(r=2, target_modules=targets, modules_to_save=["classifier"]))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name and ".anchor." not in name:
                param.normal_()  # a non-zero adapter in the online branch
    find_anchor_update(lora)()
    anchor = dict(model.ma_msf.anchor.layers.named_parameters())
    online = dict(model.ma_msf._online_head().named_parameters())
    assert any("lora_B" in name for name in anchor)
    assert all(torch.equal(anchor[name], online[name]) for name in anchor)


def test_loss_decreases_on_a_fixed_batch() -> None:
    model = tiny()
    model.train()
    pixels, labels = batch(8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        model.update_anchor()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = tiny(anchor_scope="last_stage").eval()
    pixels, labels = batch()
    model(pixel_values=pixels, labels=labels).loss.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()  # < 5.23
    assert model.ma_msf.backbone.grad_checkpointing
    model(pixel_values=pixels, labels=labels).loss.backward()
    checkpointed = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name])


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One DDP process: same init, different data per rank, an SGD step then `update_anchor()`, three times."""
    from torch.nn.parallel import DistributedDataParallel

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = tiny(anchor_momentum=0.9)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1)
    for step in range(3):
        pixels, labels = batch(4, seed=100 * rank + step)
        optimizer.zero_grad()
        ddp(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
        ddp.module.update_anchor()
    anchor, online = anchor_and_online(model)
    torch.save({"anchor": anchor, "online": online}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_processes_update_the_anchor_identically(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    torch.manual_seed(0)
    initial, _ = anchor_and_online(tiny(anchor_momentum=0.9))  # the seed-0 model both ranks started from
    for name, tensor in states[0]["anchor"].items():
        assert torch.equal(tensor, states[1]["anchor"][name]), name
    assert not torch.equal(states[0]["anchor"]["conv_head.weight"], initial["conv_head.weight"])
    # Each process's online BN statistics saw only its own batches: the anchors agree only because
    # update_anchor broadcasts rank 0's copy.
    assert not torch.equal(states[0]["online"]["bn2.running_mean"], states[1]["online"]["bn2.running_mean"])
    assert torch.equal(states[0]["anchor"]["bn2.running_mean"], states[0]["online"]["bn2.running_mean"])
