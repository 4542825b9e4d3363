"""The training loop: `train(config)` runs (or resumes) a run described by a `TrainingConfig`.

One loop for every architecture and every machine: CPU, one GPU, or many GPUs/nodes under `accelerate launch`, mixed
precision, gradient accumulation and an optional `torch.compile`. What differs by architecture is chosen by
`model_type` in `hf_cxr.training.data` (`image_inputs`, `ct_inputs`).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_cxr.callbacks import update_model_anchor
from hf_cxr.data._common import load_converted, strict_json
from hf_cxr.registry import build_model, is_ct_model
from hf_cxr.training.checkpoint import (
    TrainingProgress,
    latest_checkpoint,
    load_checkpoint,
    prepare_output_dir,
    save_checkpoint,
)
from hf_cxr.training.config import GradientClipping, TrainingConfig
from hf_cxr.training.data import (
    SeededShuffleSampler,
    apply_data_section,
    ct_inputs,
    default_num_workers,
    image_inputs,
    loader_options,
)
from hf_cxr.training.schedule import (
    apply_stage,
    build_optimizer,
    describe_stage,
    lr_at,
    resolve_steps,
    stages_from_recipe,
)
from hf_cxr.training.teacher import build_distillation, load_teacher
from hf_cxr.training.tracking import DataWaitClock, compute_summary, print_outputs, tracker_list
from hf_cxr.training.validation import validate_and_keep_best


def train(config: TrainingConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the summary added to `metrics.json` (steps, stages, validation history,
    compute). `hf-cxr train` makes `config` from its flags with `config_from_arguments`.

    Everything that can be refused is checked before training starts: the recipe and flags (`ValueError`), the
    output folder (`FileExistsError`, `FileNotFoundError`, see `prepare_output_dir`), the model's config, the dataset
    and the recipe's data section (`apply_data_section`); each error names the value and what to do. Raises
    `TypeError` when `config` is not a `TrainingConfig`."""
    if not isinstance(config, TrainingConfig):
        raise TypeError(
            f"train() takes a TrainingConfig, got {type(config).__name__}; "
            "hf_cxr.training.arguments.config_from_arguments makes one from parsed `hf-cxr train` flags"
        )
    config = copy.deepcopy(config)  # the run fills in its recipe (the data section, the preset built): a copy
    config.check()
    output_dir = Path(config.output_dir)
    prepare_output_dir(output_dir, config.resume_from_checkpoint, config.overwrite_output_dir)
    recipe, opt = config.recipe, config.recipe.optimization
    ct = is_ct_model(config.model_type)
    log_with = tracker_list(config.log_with, output_dir / "logs")
    # Everything that can be refused (the model's config, the data and the recipe's data section) is checked
    # before the Accelerator and its trackers write anything under the output folder.
    set_seed(opt.seed)
    preset = config.built_preset
    model = build_model(config.model_type, preset=preset, **recipe.model.overrides)
    data = load_converted(config.dataset)
    label_names = [model.config.id2label[index] for index in sorted(model.config.id2label)]
    train_split, validation_split, dataset_record = apply_data_section(recipe, config.dataset, data, label_names)
    run_record = {
        "command_line": config.command_line,
        "model_type": config.model_type,
        "preset": preset,
        "image_size": model.config.image_size,
        "recipe": config.recipe_name,
        "seed": opt.seed,
        "max_steps": config.max_steps,
        "dataset": dataset_record,
    }
    accelerator = Accelerator(
        cpu=config.use_cpu,
        gradient_accumulation_steps=opt.gradient_accumulation_steps,
        mixed_precision=opt.mixed_precision,
        log_with=log_with,
        # Every tracker (ours, TensorBoard, W&B's local files) writes under OUTPUT_DIR/logs/run.
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # MMCAF-Net's stages leave heads (and frozen parts) without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)] if ct else None,
    )

    if config.num_workers is None:
        config.num_workers = default_num_workers(accelerator.device, accelerator.num_processes)
    stages = stages_from_recipe(recipe)
    teacher = load_teacher(recipe.distillation, label_names)
    if ct:
        inputs = ct_inputs(config, model, train_split, validation_split)
    else:
        inputs = image_inputs(config, model, train_split, validation_split, teacher, accelerator.device)
    # augment_on, 2D: where the augmentation runs ("none": the recipe has none), recorded in the compute summary
    processor, stage_data, eval_loaders, scorer, finish_batch, augment_on = inputs
    recipe.model.preset = preset  # recipe.yaml records the preset built, not the file's
    # Each stage's rows come from a seeded sampler; the loader's own generator (not the global one, which the
    # checkpoint restores) gives each epoch's worker seed, so starting the epoch anew on resume draws nothing.
    options = loader_options(config.num_workers, accelerator.device)
    options.update(batch_size=opt.batch_size, drop_last=False)
    loaders = [
        DataLoader(split, sampler=SeededShuffleSampler(len(split), opt.seed), generator=torch.Generator(), **options)
        for split in stage_data
    ]

    # One optimizer for the whole run; its learning rate comes from `lr_at` (base lr 1.0 x the absolute rate).
    # CT stages freeze and unfreeze parts: every parameter is in it (a frozen one has no gradient and is skipped).
    parameters = [p for p in model.parameters() if p.requires_grad or ct]
    optimizer = build_optimizer(opt, parameters)
    if config.compile:
        model = torch.compile(model)
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *eval_loaders, *loaders)
    eval_loaders, loaders = prepared[: len(eval_loaders)], prepared[len(eval_loaders) :]

    def score(accelerator: Accelerator, scored: Any) -> dict[str, float]:
        return scorer(accelerator, scored, eval_loaders)

    steps_per_epoch = [max(math.ceil(len(loader) / opt.gradient_accumulation_steps), 1) for loader in loaders]
    total_steps = resolve_steps(stages, steps_per_epoch, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, stages, opt, steps_per_epoch))

    ema = None
    if opt.ema.enabled:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=opt.ema.decay)
    progress = TrainingProgress()
    progress.start_clock()
    distiller = build_distillation(recipe.distillation, teacher, label_names, accelerator)

    resume = config.resume_from_checkpoint
    if resume == "latest":
        resume = latest_checkpoint(output_dir)
        if resume is None:
            accelerator.print(f"no checkpoint in '{output_dir / 'checkpoints'}' yet: starting the run")
    if resume:
        load_checkpoint(accelerator, Path(resume), progress, scheduler, ema)
        accelerator.print(f"resumed from {resume} at step {progress.step}")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers("run", config={"model": config.model_type, "preset": preset,
                                             "recipe": config.recipe_name, "total_steps": total_steps,
                                             "seed": opt.seed})  # fmt: skip
    unwrapped = accelerator.unwrap_model(model)
    eval_every = config.eval_steps or min(steps_per_epoch)
    stopped_early = False
    start_step = progress.step
    bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_main_process, desc="training")
    say = bar.write if accelerator.is_main_process else (lambda _: None)
    keep_best = (accelerator, model, ema, score, processor, progress, recipe, output_dir, ct, run_record, say)
    checkpoint = (output_dir / "checkpoints", config.keep_checkpoints, progress, scheduler, ema)
    model.train()
    clock = DataWaitClock()
    feeding = f"{config.num_workers} loader workers"
    if not ct:
        feeding += ", no augmentation" if augment_on == "none" else f", augmentation on {augment_on}"
    stage_start = 0
    for index, (stage, loader) in enumerate(zip(stages, loaders, strict=True)):
        stage_end = stage_start + stage.steps
        if progress.step >= stage_end:
            stage_start = stage_end
            continue
        apply_stage(unwrapped, stage)
        if len(stages) > 1:
            say(f"stage {index + 1}/{len(stages)} '{stage.name}' from step {max(progress.step, stage_start) + 1}: "
                f"{describe_stage(stage, unwrapped.config)}")  # fmt: skip
        while progress.step < stage_end and not stopped_early:
            epoch, step_in_epoch = divmod(progress.step - stage_start, steps_per_epoch[index])
            loader.set_epoch(epoch + 1000 * index)
            skipped = step_in_epoch * opt.gradient_accumulation_steps
            batches = accelerator.skip_first_batches(loader, skipped) if step_in_epoch else loader
            for batch in clock.batches(batches):
                with accelerator.accumulate(model):
                    loss = _training_loss(model, finish_batch(batch), distiller)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        _clip(accelerator, parameters, opt.gradient_clipping)
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                progress.step += 1
                update_model_anchor(unwrapped)
                if ema is not None:
                    ema.update(unwrapped, step=progress.step)
                bar.update(1)
                accelerator.log({"train/loss": loss.item(), "train/lr": scheduler.get_last_lr()[0]}, step=progress.step)
                if progress.step % eval_every == 0 or progress.step == total_steps:
                    say(
                        f"step {progress.step}/{total_steps}: training loss {loss.item():.4f}; "
                        f"{clock.share:.0%} of step time waiting for data ({feeding})"
                    )
                    with clock.excluded():
                        validate_and_keep_best(*keep_best)
                if progress.step % config.checkpointing_steps == 0 or progress.step == total_steps:
                    with clock.excluded():
                        save_checkpoint(accelerator, *checkpoint)
                if config.stop_after_steps is not None and progress.step - start_step >= config.stop_after_steps:
                    stopped_early = progress.step < total_steps
                    if stopped_early and progress.step % config.checkpointing_steps:
                        save_checkpoint(accelerator, *checkpoint)
                    break
                if progress.step >= stage_end:
                    break
        stage_start = stage_end
        if stopped_early:
            break
    bar.close()
    accelerator.end_training()
    progress.tick()
    summary = {"step": progress.step, "total_steps": total_steps, "best_step": progress.best_step,
               "best_validation_metric": progress.best_metric, "finished": not stopped_early,
               "stages": [{"name": st.name, "steps": st.steps, "exclude_no_finding": st.exclude_no_finding,
                           "learning_rate": st.learning_rate, **st.loss_fields} for st in stages],
               "history": progress.history,
               "compute": compute_summary(accelerator, opt.batch_size, progress.seconds, clock.share,
                                          config.num_workers, augment_on)}  # fmt: skip
    if accelerator.is_main_process and not stopped_early and (output_dir / "metrics.json").is_file():
        best = json.loads((output_dir / "metrics.json").read_text())
        (output_dir / "metrics.json").write_text(strict_json({**best, "training": summary}))
    if accelerator.is_main_process:
        print_outputs(output_dir, summary, progress)
    return summary


def _training_loss(model: Any, batch: dict[str, torch.Tensor], distiller: Any) -> torch.Tensor:
    """The batch's loss: the model's own, or with a teacher the distillation loss on the student's logits."""
    if distiller is None:
        inputs = {key: batch[key] for key in ("pixel_values", "clinical_values") if key in batch}
        return model(**inputs, labels=batch["labels"]).loss
    teacher, loss_fn = distiller
    output = model(pixel_values=batch["pixel_values"])
    cls_logits = getattr(output, "cls_logits", None)
    with torch.no_grad():
        teacher_out = teacher.scores(batch.get("teacher_pixel_values", batch["pixel_values"]))
    return loss_fn(
        cls_logits if cls_logits is not None else output.logits,
        batch["labels"],
        teacher_out,
        distillation_logits=getattr(output, "distillation_logits", None),
    )


def _clip(accelerator: Accelerator, parameters: list[torch.nn.Parameter], clipping: GradientClipping | None) -> None:
    """`optimization.gradient_clipping`: the global norm, or adaptive gradient clipping (timm); None: no clipping."""
    if clipping is None:
        return
    if clipping.mode == "norm":
        accelerator.clip_grad_norm_(parameters, clipping.value)
    else:
        from timm.utils import adaptive_clip_grad

        adaptive_clip_grad(parameters, clip_factor=clipping.value)
