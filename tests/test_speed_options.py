"""Speed options (issue 11): gradient checkpointing, channels-last, torch.compile, float16 with a
GradScaler, the choice of precision, sampling under autocast. Each must leave the mathematics
alone: oracles are the same run without the option."""

from __future__ import annotations

import pytest
import torch

from conftest import read_metrics, train_tiny
from ddpmkit.diffusion import GaussianDiffusion
from ddpmkit.nn import UNet, UNetConfig
from ddpmkit.rundir import RunDir
from ddpmkit.train import precision as train_precision
from ddpmkit.train import training_precision


def _weights(run) -> dict[str, torch.Tensor]:
    return RunDir(run).load_checkpoint().tensors["model"]


def test_checkpointing_keeps_the_gradients_and_the_weights_names(one_thread):
    config = UNetConfig(dropout=0.1, attention=("none", "none", "full"))
    torch.manual_seed(0)
    plain = UNet(config)
    checkpointed = UNet(UNetConfig(**{**config.__dict__, "checkpointing": True}))
    assert plain.state_dict().keys() == checkpointed.state_dict().keys()
    checkpointed.load_state_dict(plain.state_dict())
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([1, 50, 900])
    grads = []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # dropout: the recomputation replays the same masks
        model.train()
        model(x, t).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_checkpointing_stores_less_for_the_backward_pass(one_thread, monkeypatch):
    """Bytes of the tensors autograd keeps for backward (storage counted once), batch 8 at
    16×16, the inputs a checkpointed layer keeps to recompute itself included: checkpointing
    keeps only each layer's inputs."""
    storages: dict[int, int] = {}

    def remember(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    real = torch.utils.checkpoint.checkpoint

    def keeping_inputs(function, *args, **kwargs):
        for a in args:
            if isinstance(a, torch.Tensor):
                remember(a)
        return real(function, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", keeping_inputs)

    def saved_bytes(model: UNet) -> int:
        storages.clear()
        with torch.autograd.graph.saved_tensors_hooks(remember, lambda t: t):
            model(torch.randn(8, 1, 16, 16), torch.arange(8)).sum()
        return sum(storages.values())

    plain = saved_bytes(UNet(UNetConfig()).train())
    checkpointed = saved_bytes(UNet(UNetConfig(checkpointing=True)).train())
    assert checkpointed < plain / 2


def test_a_checkpointed_run_trains_like_a_plain_one(shapes_npz, tmp_path, one_thread):
    train_tiny(shapes_npz, tmp_path / "plain", "train.steps=3")
    train_tiny(shapes_npz, tmp_path / "ckpt", "train.steps=3", "model.checkpointing=true")
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)


def test_channels_last_trains_like_the_default_layout(shapes_npz, tmp_path, one_thread):
    train_tiny(shapes_npz, tmp_path / "nchw", "train.steps=3", "train.amp=false")
    trainer = train_tiny(
        shapes_npz,
        tmp_path / "nhwc",
        "train.steps=3",
        "train.amp=false",
        "train.channels_last=true",
    )
    conv = trainer.model.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    a, b = _weights(tmp_path / "nchw"), _weights(tmp_path / "nhwc")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


@pytest.mark.slow
def test_compile_wraps_the_training_model(shapes_npz, tmp_path, monkeypatch, one_thread):
    """train.compile hands the training model to torch.compile (here with the eager backend:
    the inductor backend needs minutes on this CPU) and trains to the same weights."""
    real = torch.compile
    compiled = []

    def eager_compile(module, **kwargs):
        compiled.append(module)
        return real(module, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    train_tiny(shapes_npz, tmp_path / "eager", "train.steps=2", "train.amp=false")
    trainer = train_tiny(
        shapes_npz, tmp_path / "compiled", "train.steps=2", "train.amp=false", "train.compile=true"
    )
    assert compiled == [trainer.model]
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "compiled")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


@pytest.mark.parametrize(
    ("device", "native_bf16", "amp", "amp_dtype", "expected"),
    [
        ("cuda", True, True, "auto", (torch.bfloat16, False)),  # A100, H100: native bf16
        ("cuda", False, True, "auto", (torch.float16, True)),  # V100, T4: fp16 + GradScaler
        ("cpu", True, True, "auto", (torch.bfloat16, False)),  # AVX-512 BF16 / AMX
        ("cpu", False, True, "auto", (None, False)),  # no fast bf16: float32, with a note
        ("cuda", True, False, "auto", (None, False)),  # train.amp=false
        ("cpu", False, True, "fp16", (torch.float16, True)),  # asked for
        ("cuda", False, True, "bf16", (torch.bfloat16, False)),  # asked for, even emulated
    ],
)
def test_the_precision_follows_the_device(
    monkeypatch, device, native_bf16, amp, amp_dtype, expected
):
    monkeypatch.setattr(train_precision, "bf16_autocast_supported", lambda d: native_bf16)
    dtype, scaled, note = training_precision(torch.device(device), amp, amp_dtype)
    assert (dtype, scaled) == expected
    assert (note is not None) == (amp and expected[0] is None)


@pytest.mark.slow
def test_float16_with_a_grad_scaler_resumes_exactly(shapes_npz, tmp_path, one_thread):
    fp16 = ("train.amp_dtype=fp16", "train.checkpoint_every=2", "train.lr_schedule=constant")
    train_tiny(shapes_npz, tmp_path / "straight", "train.steps=4", *fp16)
    train_tiny(shapes_npz, tmp_path / "stopped", "train.steps=2", *fp16)
    state = RunDir(tmp_path / "stopped").load_checkpoint(files=()).state
    assert state["scaler"]["scale"] == 65536.0  # GradScaler's initial scale, saved
    train_tiny(shapes_npz, tmp_path / "stopped", "train.steps=4", *fp16, resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [r["loss"] for r in read_metrics(tmp_path / "straight")]
    assert losses == [r["loss"] for r in read_metrics(tmp_path / "stopped")]


def test_a_scaler_overflow_is_skipped_but_not_a_bad_step(
    shapes_npz, tmp_path, monkeypatch, one_thread
):
    """Step 2's loss is multiplied by 1e36: finite, but its gradients scaled by 65536 overflow.
    The GradScaler skips the update and halves its scale; with train.max_bad_steps=1 the run
    would stop if that counted as a bad step. A non-finite loss still is one."""
    real = GaussianDiffusion.training_loss
    calls = 0

    def huge_on_the_second_call(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        out = real(self, *args, **kwargs)
        if calls == 2:
            out.loss = out.loss * 1e36
        return out

    monkeypatch.setattr(GaussianDiffusion, "training_loss", huge_on_the_second_call)
    extra = ("train.amp_dtype=fp16", "train.max_bad_steps=1", "train.steps=3")
    trainer = train_tiny(shapes_npz, tmp_path / "run", *extra)
    assert trainer.state.step == 3 and trainer.state.skipped_steps == 1
    assert trainer.state.bad_steps == 0 and trainer.state.scaler.get_scale() == 32768.0
    assert sum(r.get("skipped_steps", 0) for r in read_metrics(tmp_path / "run")) == 1


def test_sampling_under_autocast_stays_close_and_float32(one_thread):
    from ddpmkit.generate import SampleRequest, generate
    from ddpmkit.precision import with_autocast
    from ddpmkit.schedules import make_schedule

    torch.manual_seed(0)
    model = UNet(UNetConfig()).eval()
    with torch.no_grad():  # the output convolution starts at zero: give the net an output
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(std=0.05)
    diffusion = GaussianDiffusion(make_schedule("cosine", 100), "eps", "fixed_small")
    request = SampleRequest(n=4, sampler="ddim", steps=10, seed=1)
    with torch.no_grad():
        full = generate(model, diffusion, (1, 16, 16), request, torch.device("cpu"), False)
        request.amp = True
        half = generate(model, diffusion, (1, 16, 16), request, torch.device("cpu"), False)
        x, t = torch.randn(4, 1, 16, 16), torch.full((4,), 50)
        exact = model(x, t)
        rounded = with_autocast(model, torch.device("cpu"))(x, t)
    assert half.images.dtype == torch.float32 and rounded.dtype == torch.float32
    assert torch.isfinite(half.images).all() and not torch.equal(full.images, half.images)
    # bf16 rounding in the body only: one call is within a few bf16 ulps (2⁻⁸) of float32. The
    # sampled images are not compared: a random-weight net's ODE amplifies any rounding (10
    # DDIM steps: up to 1.4 apart on an AMX CPU), and x̂_0 = (x_T − σε̂)/α near t = T too.
    assert 0 < float((exact - rounded).abs().max() / exact.abs().max()) < 0.05


def test_the_fused_cpu_adam_trains_like_the_per_parameter_loop(shapes_npz, tmp_path, one_thread):
    """train.cpu_fused_adam swaps AdamW's kernel, not its mathematics: the oracle is torch's
    per-parameter loop (a separate implementation) over the same three steps."""
    common = ("train.steps=3", "train.amp=false")
    loop = train_tiny(shapes_npz, tmp_path / "loop", *common, "train.cpu_fused_adam=false")
    fused = train_tiny(shapes_npz, tmp_path / "fused", *common, "train.cpu_fused_adam=true")
    assert loop.state.optimizer.param_groups[0]["fused"] is None
    assert fused.state.optimizer.param_groups[0]["fused"] is True
    a, b = _weights(tmp_path / "loop"), _weights(tmp_path / "fused")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_a_resumed_run_runs_the_kernel_its_config_asks_for(shapes_npz, tmp_path, one_thread):
    """The checkpoint's param groups carry the kernel flags of the process that saved them; a
    resume takes its own (the config's) instead. Under the fused kernel a resumed run continues
    exactly as a straight one."""
    common = ("train.checkpoint_every=2", "train.lr_schedule=constant", "train.amp=false")
    fused = "train.cpu_fused_adam=true"
    train_tiny(shapes_npz, tmp_path / "straight", "train.steps=4", *common, fused)
    train_tiny(shapes_npz, tmp_path / "stopped", "train.steps=2", *common, fused)
    train_tiny(shapes_npz, tmp_path / "stopped", "train.steps=4", *common, fused, resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)

    train_tiny(
        shapes_npz, tmp_path / "loop", "train.steps=2", *common, "train.cpu_fused_adam=false"
    )
    assert (
        '"fused": null'
        in RunDir(tmp_path / "loop").load_checkpoint().metadata["optimizer"]["optimizer"]
    )
    resumed = train_tiny(
        shapes_npz, tmp_path / "loop", "train.steps=3", *common, fused, resume=True
    )
    assert resumed.state.optimizer.param_groups[0]["fused"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cpu_loop_checkpoint_resumes_fused_on_cuda(shapes_npz, tmp_path):
    """The fused CUDA kernel needs each state's step on the GPU: the kernel flags are set before
    the state is loaded, so torch places the steps for the kernel that will run."""
    common = ("train.checkpoint_every=2", "train.amp=false")
    train_tiny(
        shapes_npz,
        tmp_path / "run",
        "train.steps=2",
        *common,
        "train.device=cpu",
        "train.cpu_fused_adam=false",
    )
    resumed = train_tiny(
        shapes_npz, tmp_path / "run", "train.steps=3", *common, "train.device=cuda", resume=True
    )
    optimizer = resumed.state.optimizer
    assert optimizer.param_groups[0]["fused"] is True
    steps = [s["step"] for s in optimizer.state.values()]
    assert steps and all(s.device.type == "cuda" for s in steps)
