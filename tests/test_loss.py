"""The supervised-token loss: the same loss and gradients as the model's own full-logits loss
for every technique, packed and not, with the LM head never run over every position; and
regional compilation compiles the decoder blocks only while training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.config.errors import ConfigError
from harness.stages import loss as loss_stage
from harness.stages.train import _datasets, build_trainer, sft_config, train
from harness.trial.run import prepare

ASSETS = Path(__file__).resolve().parent / "assets"
BASE = [
    "dataset=local", f"dataset.path={ASSETS / 'tickets.jsonl'}", "eval=none",
    "train.batch_size=4", "train.eval_every=0", "train.save_every=0", "train.compile=false",
    "optimizer.lr=3e-3", "optimizer.warmup_ratio=0",
]


@pytest.fixture
def make_cfg(compose_cfg, tmp_path):
    return lambda *overrides: compose_cfg([*BASE, *overrides], tmp_path)


def trainer_and_batch(cfg, tmp_path):
    ready = prepare(cfg)
    train_ds, _ = _datasets(ready.splits, cfg, ready.tokenizer.chat_template is not None)
    args = sft_config(cfg, tmp_path / "ckpt", False, ready.model.dtype)
    trainer = build_trainer(ready.model, ready.tokenizer, args, train_ds, None, cfg.train)
    return ready.model, trainer, next(iter(trainer.get_train_dataloader()))


def loss_and_grads(model, trainer, batch, head):
    """One forward and backward through `trainer.compute_loss`, as a training step calls it
    (under the accelerator's autocast, with the batch's count of supervised tokens)."""
    trainer.head = head
    model.zero_grad()
    items = torch.tensor(int((batch["labels"][..., 1:] != -100).sum()))
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=items)
    loss.backward()
    grads = [p.grad.float().flatten() for p in model.parameters() if p.grad is not None]
    return loss.item(), torch.cat(grads)


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("technique", ["full", "lora", "dora", "qlora"])
def test_supervised_loss_and_gradients_equal_the_full_logits_path(make_cfg, tmp_path, technique,
                                                                  packing):
    cfg = make_cfg(f"technique={technique}", f"train.packing={packing}")
    model, trainer, batch = trainer_and_batch(cfg, tmp_path)
    head = trainer.head
    assert head is not None and head.kernel == "torch"
    full_loss, full_grads = loss_and_grads(model, trainer, batch, None)
    loss, grads = loss_and_grads(model, trainer, batch, head)
    assert loss == pytest.approx(full_loss, rel=4e-3)  # bf16 rounding
    assert grads.norm().item() > 0
    assert grads.norm().item() == pytest.approx(full_grads.norm().item(), rel=1e-2)
    assert torch.nn.functional.cosine_similarity(grads, full_grads, dim=0) > 0.999


def test_the_lm_head_never_sees_the_unsupervised_positions(make_cfg, tmp_path, monkeypatch):
    model, trainer, batch = trainer_and_batch(make_cfg("technique=lora"), tmp_path)
    head, head_inputs, kernel_rows = trainer.head, [], []
    lm_head = model.get_output_embeddings()
    lm_head.register_forward_hook(lambda _m, args, _out: head_inputs.append(args[0].shape))
    real = loss_stage._compiled_cross_entropy

    def spy(hidden, weight, targets, softcap):
        kernel_rows.append(hidden.shape[0])
        return real(hidden, weight, targets, softcap)

    monkeypatch.setattr(loss_stage, "_compiled_cross_entropy", spy)
    rows, length = batch["input_ids"].shape
    supervised = int((batch["labels"][..., 1:] != -100).sum())
    assert 0 < supervised < rows * length / 2

    loss_and_grads(model, trainer, batch, None)
    assert head_inputs == [torch.Size([rows, length, lm_head.in_features])] and not kernel_rows
    head_inputs.clear()
    loss_and_grads(model, trainer, batch, head)
    # the model's forward computes one position's logits per row (logits_to_keep=1), unused
    assert head_inputs == [torch.Size([rows, 1, lm_head.in_features])]
    assert kernel_rows == [supervised]


@pytest.mark.parametrize("setting", ["train.packing=false", "train.packing=true",
                                     "train.gradient_checkpointing=true"])
def test_training_follows_the_same_curve_and_the_record_says_which_loss(make_cfg, tmp_path, setting):
    runs = {}
    for fused in ("off", "auto"):
        cfg = make_cfg("technique=lora", "train.max_steps=6", setting, f"train.fused_loss={fused}")
        ready = prepare(cfg)
        runs[fused] = train(ready.model, ready.tokenizer, ready.splits, cfg, tmp_path / fused)
    curves = {k: [h["train/loss"] for h in r.history if "train/loss" in h] for k, r in runs.items()}
    assert len(curves["auto"]) == 6 and curves["auto"][-1] < curves["auto"][0]
    assert curves["auto"] == pytest.approx(curves["off"], rel=1e-2), curves
    assert runs["auto"].loss == "supervised (torch)" and runs["off"].loss == "full_logits"


def test_models_whose_logits_are_not_the_plain_head_keep_their_own_loss(make_cfg, tmp_path):
    model = prepare(make_cfg("technique=lora")).model
    head, why = loss_stage.find_head(model, "torch")
    assert head is not None and head.softcap is None
    assert loss_stage.find_head(model, None) == (None, "train.fused_loss=off")
    model.get_base_model().config.model_type = "cohere"  # logits * logit_scale
    head, why = loss_stage.find_head(model, "torch")
    assert head is None and "'cohere'" in why


def test_kernel_choice_per_device(monkeypatch):
    monkeypatch.setattr(loss_stage, "liger_available", lambda: True)
    monkeypatch.setattr(loss_stage, "cce_available", lambda: True)
    assert loss_stage.resolve_kernel("auto", cuda=True) == "liger"
    assert loss_stage.resolve_kernel("auto", cuda=False) == "torch"
    assert loss_stage.resolve_kernel("off", cuda=True) is None
    monkeypatch.setattr(loss_stage, "liger_available", lambda: False)
    assert loss_stage.resolve_kernel("auto", cuda=True) == "cce"
    monkeypatch.setattr(loss_stage, "cce_available", lambda: False)
    assert loss_stage.resolve_kernel("auto", cuda=True) == "torch"


@pytest.mark.parametrize(("override", "cuda", "message"), [
    ("train.fused_loss=fast", False,
     "train.fused_loss='fast': choose one of auto, liger, cce, torch, off"),
    ("train.fused_loss=liger", False, "train.fused_loss=liger needs CUDA"),
    ("train.fused_loss=cce", False, "train.fused_loss=cce needs CUDA"),
    ("train.compile_scope=layer", False, "train.compile_scope='layer': choose one of blocks, model"),
])
def test_bad_loss_settings_name_the_setting(make_cfg, override, cuda, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        loss_stage.validate_loss(make_cfg(override).train, cuda=cuda)


def test_regional_compile_compiles_each_block_only_while_training(make_cfg, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **k: (compiled.append(self),
                                               setattr(self, "_compiled_call_impl", self._call_impl)))
    model = prepare(make_cfg("technique=lora")).model
    layers = loss_stage.repeated_blocks(model)
    assert len(layers) == 2 and type(layers[0]).__name__ == "LlamaDecoderLayer"
    with loss_stage.compiled(model, "blocks"):
        assert compiled == list(layers)
        assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(layer._compiled_call_impl is None for layer in layers)  # eager for evaluation
    compiled.clear()
    with loss_stage.compiled(model, "model"):
        assert compiled == [model]
    assert model._compiled_call_impl is None


def test_the_cpu_kernel_outlives_the_recompile_limit():
    """A sweep trains many models in one process: past dynamo's recompile limit the kernel
    runs eagerly, with the same result, instead of failing the trial."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 48, (5,), generator=gen)
    with torch._dynamo.config.patch(recompile_limit=1):
        for dtype, grad, softcap in [(torch.float32, True, None), (torch.bfloat16, False, None),
                                     (torch.float32, False, 30.0)]:
            hidden = torch.randn(5, 16, generator=gen).to(dtype).requires_grad_(grad)
            weight = torch.randn(48, 16, generator=gen).to(dtype)
            loss = loss_stage._compiled_cross_entropy(hidden, weight, targets, softcap)
            eager = loss_stage._matmul_cross_entropy(hidden, weight, targets, softcap)
            assert loss.item() == pytest.approx(eager.item(), rel=1e-2)


@pytest.mark.slow
def test_two_smollm2_steps_give_the_same_losses_and_gradients(compose_cfg, tmp_path):
    """The real model (49k vocabulary, tied head) in bf16: the two paths agree to bf16
    rounding over two optimizer steps."""
    runs = {}
    for fused in ("off", "auto"):
        cfg = compose_cfg(["model=smollm2_135m", "technique=lora", "eval=none",
                           "dataset.demo.n_train=40", "dataset.demo.n_val=8", "dataset.demo.n_test=8",
                           "train.max_steps=2", "train.eval_every=0", "train.save_every=0",
                           "train.compile=false", f"train.fused_loss={fused}"], tmp_path / fused)
        ready = prepare(cfg)
        runs[fused] = train(ready.model, ready.tokenizer, ready.splits, cfg, tmp_path / fused / "run")
    for key in ("train/loss", "train/grad_norm"):
        curves = {k: [h[key] for h in r.history if key in h] for k, r in runs.items()}
        assert len(curves["auto"]) == 2 and curves["auto"] == pytest.approx(curves["off"], rel=1e-2)
    assert runs["auto"].grad_norm_first_step == pytest.approx(runs["off"].grad_norm_first_step,
                                                              rel=1e-2)
