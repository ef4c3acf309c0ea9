"""train.optimizer=muon: Muon on the hidden matrices, AdamW on the rest (ddpmkit.train.muon).

Oracles: torch's own Muon and AdamW (separate implementations) step for step, and the closed form
of the Newton–Schulz iteration on a matrix's singular values, computed from its SVD in float64.
"""

from __future__ import annotations

import pytest
import torch

from conftest import train_tiny
from ddpmkit.config import RunConfig
from ddpmkit.errors import ConfigError, RunDirError
from ddpmkit.nn import UNet, UNetConfig
from ddpmkit.rundir import RunDir
from ddpmkit.train.muon import (
    NEWTON_SCHULZ,
    MuonAdamW,
    muon_parameters,
    orthogonalise,
    stacked_blocks,
)


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.04), (torch.float32, 1e-4)])
@pytest.mark.parametrize("shape", [(24, 40), (64, 576), (300, 20)])
def test_newton_schulz_maps_each_singular_value_by_the_quintic(shape, dtype, tolerance):
    """With G = U S Vᵀ and X₀ = G/‖G‖_F, every step keeps U and V and sends each singular value
    s to p(s) = as + bs³ + cs⁵, so five steps give U p⁵(S/‖S‖) Vᵀ exactly in real arithmetic;
    the iteration must land within its dtype's rounding (a few % in bfloat16, the optimizer's
    choice on GPUs; 1e-4 in float32, its choice on the CPU), while the polar factor UVᵀ itself
    is about 20 % away (the quintic stops at singular values in [0.68, 1.11])."""
    torch.manual_seed(0)
    g = torch.randn(*shape, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    a, b, c = NEWTON_SCHULZ
    x = s / s.norm()
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    expected = u @ torch.diag(x) @ vh
    got = orthogonalise(g, dtype=dtype)
    assert got.dtype == dtype and got.shape == g.shape
    assert float((got.double() - expected).norm() / expected.norm()) < tolerance
    assert float((u @ vh - expected).norm() / expected.norm()) > 0.15
    assert 0.6 < float(x.min()) and float(x.max()) < 1.2


def test_the_muon_half_steps_as_torchs_muon_and_the_rest_as_torchs_adamw():
    """Five steps with weight decay: a matrix under MuonAdamW equals torch.optim.Muon with the
    AdamW-matched scale (0.2·√max(A, B)), a bias equals torch.optim.AdamW, bit for bit."""
    torch.manual_seed(0)
    w, bias = torch.randn(24, 40), torch.randn(40)
    ours_w, ref_w = w.clone().requires_grad_(), w.clone().requires_grad_()
    ours_b, ref_b = bias.clone().requires_grad_(), bias.clone().requires_grad_()
    ours = MuonAdamW([ours_w], [ours_b], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    muon = torch.optim.Muon([ref_w], lr=1e-2, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([ref_b], lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99))
    for _ in range(5):
        g, gb = torch.randn(24, 40), torch.randn(40)
        ours_w.grad, ref_w.grad, ours_b.grad, ref_b.grad = g, g.clone(), gb, gb.clone()
        ours.step()
        muon.step()
        adamw.step()
    assert torch.equal(ours_w, ref_w) and torch.equal(ours_b, ref_b)
    assert not torch.equal(ours_w, w)


def test_a_convolution_kernel_steps_as_its_out_by_fan_in_matrix():
    """A (out, in, k, k) kernel is the (out, in·k·k) matrix to Muon: torch's Muon on that view
    is the oracle."""
    torch.manual_seed(1)
    kernel = torch.randn(8, 4, 3, 3)
    ours_k = kernel.clone().requires_grad_()
    ref_k = kernel.reshape(8, 36).clone().requires_grad_()
    ours = MuonAdamW([ours_k], [], lr=3e-3)
    muon = torch.optim.Muon([ref_k], lr=3e-3, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        g = torch.randn(8, 4, 3, 3)
        ours_k.grad, ref_k.grad = g, g.reshape(8, 36).clone()
        ours.step()
        muon.step()
    assert torch.equal(ours_k.reshape(8, 36), ref_k)


@pytest.mark.parametrize("count", [2, 3])
def test_a_split_weight_steps_as_torchs_muon_on_its_blocks_as_separate_weights(count):
    """With ``blocks``, a (count·8, 4, 1, 1) kernel whose rows stack ``count`` maps (q|k|v, or
    scale|shift) steps as torch's Muon on ``count`` separate (8, 4) matrices, each scaled by its
    own shape (0.2·√8), weight decay included, bit for bit; without, it is one matrix."""
    torch.manual_seed(2)
    kernel = torch.randn(count * 8, 4, 1, 1)
    ours_k = kernel.clone().requires_grad_()
    whole_k = kernel.clone().requires_grad_()
    refs = [part.reshape(8, 4).clone().requires_grad_() for part in kernel.chunk(count)]
    ours = MuonAdamW([ours_k], [], lr=3e-3, weight_decay=0.1, blocks={ours_k: count})
    whole = MuonAdamW([whole_k], [], lr=3e-3, weight_decay=0.1)
    muon = torch.optim.Muon(refs, lr=3e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for _ in range(3):
        g = torch.randn(count * 8, 4, 1, 1)
        ours_k.grad, whole_k.grad = g, g.clone()
        for ref, part in zip(refs, g.chunk(count), strict=True):
            ref.grad = part.reshape(8, 4).clone()
        ours.step()
        whole.step()
        muon.step()
    assert torch.equal(ours_k.reshape(count, 8, 4), torch.stack(refs))
    assert not torch.equal(whole_k, ours_k)


def test_stacked_blocks_name_every_qkv_and_scale_shift_weight():
    """The split covers each attention's q/k/v weight (3 blocks, full and linear attention)
    and each ResBlock's scale/shift projection (2); with additive time conditioning only the
    q/k/v weights remain."""
    from ddpmkit.nn.attention import FullAttention, LinearAttention
    from ddpmkit.nn.blocks import ResBlock

    def expected(model):
        out = {}
        for name, module in model.named_modules():
            if isinstance(module, (FullAttention, LinearAttention)):
                out[f"{name}.qkv.weight"] = 3
            if isinstance(module, ResBlock) and module.scale_shift:
                out[f"{name}.time_proj.1.weight"] = 2
        return out

    config = UNetConfig(base_channels=16, attention=("none", "linear", "full"))
    for model in (UNet(config), UNet(UNetConfig(base_channels=16, time_conditioning="add"))):
        names = {id(p): n for n, p in model.named_parameters()}
        blocks = {names[id(p)]: count for p, count in stacked_blocks(model).items()}
        assert blocks == expected(model)
        assert any(c == 3 for c in blocks.values())
        for name, count in blocks.items():
            assert model.get_parameter(name).size(0) % count == 0
    assert any(c == 2 for c in stacked_blocks(UNet(config)).values())
    assert all(c == 3 for c in stacked_blocks(model).values())  # additive: no scale/shift


def test_train_muon_split_reaches_the_optimizer():
    from ddpmkit.train.setup import make_optimizer

    config = RunConfig()
    config.train.optimizer = "muon"
    model = UNet(config.model)
    assert make_optimizer(model, config.train, torch.device("cpu")).blocks == {}
    config.train.muon_split = True
    split = make_optimizer(model, config.train, torch.device("cpu"))
    assert split.blocks == stacked_blocks(model) and split.blocks


def test_the_trainer_iterates_in_float32_on_the_cpu():
    from ddpmkit.train.setup import make_optimizer

    config = RunConfig()
    config.train.optimizer = "muon"
    optimizer = make_optimizer(UNet(config.model), config.train, torch.device("cpu"))
    assert isinstance(optimizer, MuonAdamW) and optimizer.ns_dtype == torch.float32
    assert [g["muon"] for g in optimizer.param_groups] == [True, False]
    config.train.optimizer = "adamw"
    assert type(make_optimizer(UNet(config.model), config.train, torch.device("cpu"))) is (
        torch.optim.AdamW
    )


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = UNet(UNetConfig(base_channels=16, num_classes=3))
    hidden, rest = muon_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(hidden) + len(rest) == len(list(model.parameters()))
    assert not {id(p) for p in hidden} & {id(p) for p in rest}
    muon_names = {names[id(p)] for p in hidden}
    adamw_names = {names[id(p)] for p in rest}
    assert {"conv_in.weight", "out.2.weight", "class_embed.weight"} <= adamw_names
    assert all(model.get_parameter(n).ndim >= 2 for n in muon_names)
    assert all(
        model.get_parameter(n).ndim == 1 or n.split(".")[0] in ("conv_in", "out", "class_embed")
        for n in adamw_names
    )
    assert "time_embed.0.weight" in muon_names and any(".conv" in n for n in muon_names)


def test_an_unknown_optimizer_is_one_line_naming_the_choices():
    config = RunConfig()
    config.train.optimizer = "sgd"
    with pytest.raises(
        ConfigError, match=r"^unknown train.optimizer 'sgd': choose one of adamw, muon$"
    ):
        config.validate()
    config.train.optimizer, config.train.muon_momentum = "muon", 1.0
    with pytest.raises(ConfigError, match="muon_momentum"):
        config.validate()
    config.train.optimizer, config.train.muon_momentum = "adamw", 0.95
    config.train.muon_split = True
    with pytest.raises(ConfigError, match=r"^train.muon_split splits Muon's matrices; .*'adamw'"):
        config.validate()


def test_a_muon_run_resumes_bit_for_bit(shapes_npz, tmp_path, one_thread):
    """Stopped at step 2 and resumed to 4 equals 4 straight steps: the momentum buffers and
    AdamW's moments travel in the checkpoint."""
    common = ("train.optimizer=muon", "train.checkpoint_every=2", "train.amp=false")
    straight = train_tiny(shapes_npz, tmp_path / "straight", "train.steps=4", *common)
    train_tiny(shapes_npz, tmp_path / "stopped", "train.steps=2", *common)
    train_tiny(shapes_npz, tmp_path / "stopped", "train.steps=4", *common, resume=True)
    assert isinstance(straight.state.optimizer, MuonAdamW)
    a = RunDir(tmp_path / "straight").load_checkpoint().tensors
    b = RunDir(tmp_path / "stopped").load_checkpoint().tensors
    for part in ("model", "ema", "optimizer"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert any(k.endswith("momentum_buffer") for k in a["optimizer"])


def test_an_adamw_run_resumed_as_muon_is_refused_in_one_line(shapes_npz, tmp_path, one_thread):
    train_tiny(shapes_npz, tmp_path / "run", "train.steps=2", "train.amp=false")
    with pytest.raises(RunDirError, match="optimizer state does not fit") as err:
        train_tiny(
            shapes_npz,
            tmp_path / "run",
            "train.steps=3",
            "train.amp=false",
            "train.optimizer=muon",
            resume=True,
        )
    assert "\n" not in str(err.value)
