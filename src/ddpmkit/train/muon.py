"""Muon on the network's hidden weight matrices, AdamW on everything else.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks") replaces a
weight matrix's update by the orthogonalised Nesterov momentum: with M_t = μ M_{t−1} + (1 − μ) g_t
and N_t = (1 − μ) g_t + μ M_t, the update is O_t ≈ U Vᵀ for N_t = U S Vᵀ, found by five steps of
the quintic Newton–Schulz iteration X ← aX + (bA + cA²)X, A = XXᵀ, (a, b, c) = (3.4445, −4.7750,
2.0315), on X₀ = N_t/‖N_t‖_F, in bfloat16 on GPUs as its authors run it and in float32 on the
CPU, where the small matrices of a U-Net iterate 2.2× faster so
(``benchmarks/newton_schulz_dtype.py``). A convolution's kernel (out, in, k, k) is the matrix
(out, in·k·k). The step is scaled by 0.2·√max(rows, cols) (Liu et al. 2025, "Muon is scalable
for LLM training", eq. 4), which gives the update the RMS of an AdamW step, so one ``train.lr``
and ``train.weight_decay`` (decoupled: θ ← θ − lr·λ·θ) serve both halves. The input and output
convolutions, the class embedding, biases and norms keep AdamW, as Muon's authors prescribe.

A weight that stacks several maps along its output rows (attention's q, k and v; a block's time
scale and shift) is one matrix to Muon by default; ``train.muon_split`` (the optimizer's
``blocks``) orthogonalises each stacked block on its own and scales it by its own shape, as if it
were a separate weight (Muon's authors do so for q, k and v; Jordan et al. 2024). The modules
name such weights in ``stacked_outputs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.adam import adam

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
"""The quintic's coefficients (Jordan et al. 2024): the steepest slope at 0 that still maps the
singular values into about [0.7, 1.2] after five steps."""
NEWTON_SCHULZ_STEPS = 5
ADAMW_OWNED = ("conv_in.", "out.", "class_embed.")
"""The U-Net's parameters that stay with AdamW whatever their shape: the first and last layers
and the embedding table."""


def orthogonalise(
    matrix: torch.Tensor,
    steps: int = NEWTON_SCHULZ_STEPS,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """≈ U Vᵀ of ``matrix`` = U S Vᵀ (2-D) by the quintic Newton–Schulz iteration in ``dtype``;
    a wide matrix is iterated as is, a tall one transposed (A = XXᵀ is then the small Gram)."""
    a, b, c = NEWTON_SCHULZ
    tall = matrix.size(0) > matrix.size(1)
    x = matrix.to(dtype)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=1e-7)  # ‖X‖₂ ≤ ‖X‖_F = 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def muon_parameters(
    model: torch.nn.Module,
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(Muon's, AdamW's) parameters of ``model``: Muon takes the hidden weights of two or more
    dimensions, AdamW the rest (see :data:`ADAMW_OWNED`)."""
    muon, adamw = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        hidden = param.ndim >= 2 and not name.startswith(ADAMW_OWNED)
        (muon if hidden else adamw).append(param)
    return muon, adamw


def stacked_blocks(model: torch.nn.Module) -> dict[torch.nn.Parameter, int]:
    """Weight → number of maps stacked along its output rows, for every module that names them
    in its ``stacked_outputs`` (submodule name → count)."""
    blocks = {}
    for module in model.modules():
        for name, count in getattr(module, "stacked_outputs", {}).items():
            blocks[module.get_submodule(name).weight] = count
    return blocks


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer of two parameter groups: ``muon=True`` (Muon, see the module docstring)
    and ``muon=False`` (AdamW, torch's own kernel). Both read the same ``lr``, which the
    training loop sets on every group; ``ns_dtype`` is the Newton–Schulz iteration's. ``blocks``
    (weight → count, :func:`stacked_blocks`) splits those weights' rows into that many matrices,
    each orthogonalised and scaled on its own."""

    def __init__(
        self,
        muon_params: Iterable[torch.nn.Parameter],
        adamw_params: Iterable[torch.nn.Parameter],
        *,
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.95,
        fused: bool | None = None,
        ns_dtype: torch.dtype = torch.bfloat16,
        blocks: dict[torch.nn.Parameter, int] | None = None,
    ) -> None:
        groups = [
            {"params": list(muon_params), "muon": True},
            {"params": list(adamw_params), "muon": False},
        ]
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "betas": betas,
            "eps": eps,
            "momentum": momentum,
            "fused": fused,
        }
        super().__init__([g for g in groups if g["params"]], defaults)
        self.ns_dtype = ns_dtype
        self.blocks = dict(blocks or {})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, decay, mu = group["lr"], group["weight_decay"], group["momentum"]
        for param in group["params"]:
            if param.grad is None:
                continue
            grad = param.grad.reshape(param.size(0), -1)
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad)
            buffer = state["momentum_buffer"]
            buffer.lerp_(grad, 1 - mu)
            nesterov = grad.lerp(buffer, mu)
            rows = grad.size(0) // self.blocks.get(param, 1)
            parts = [orthogonalise(block, dtype=self.ns_dtype) for block in nesterov.split(rows)]
            update = parts[0] if len(parts) == 1 else torch.cat(parts)
            if decay:
                param.mul_(1 - lr * decay)
            scale = 0.2 * math.sqrt(max(rows, grad.size(1)))
            param.add_(update.view_as(param).to(param.dtype), alpha=-lr * scale)

    def _adamw_step(self, group: dict) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if not state:
                # as torch's AdamW keeps it: on the parameter's device for the fused kernel
                where = param.device if group["fused"] else torch.device("cpu")
                state["step"] = torch.zeros((), dtype=torch.float32, device=where)
                state["exp_avg"] = torch.zeros_like(param)
                state["exp_avg_sq"] = torch.zeros_like(param)
            params.append(param)
            grads.append(param.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adam(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            fused=group["fused"],
            decoupled_weight_decay=True,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
