"""Self-attention over the spatial positions of a feature map, as residual blocks.

* :class:`FullAttention` — multi-head softmax attention (Ho et al. 2020, appendix B; Nichol &
  Dhariwal 2021), computed with :func:`torch.nn.functional.scaled_dot_product_attention`.
* :class:`LinearAttention` — the linear attention of Shen et al. (2021, "Efficient Attention") as
  used in "The Annotated Diffusion Model": cost linear in the number of positions.

Both are ``x + f(GN(x))`` with the output projection zero-initialised, so a fresh block is the
identity.
"""

from __future__ import annotations

import torch
from torch import nn

from ddpmkit.config.model import ATTENTION_KINDS  # noqa: E402 (defined with the config)
from ddpmkit.nn.blocks import zero_module
from ddpmkit.nn.norm import GroupNorm


class FullAttention(nn.Module):
    """Residual multi-head self-attention: ``x + proj(SDPA(qkv(GN(x))))``.

    ``qkv`` is a 1x1 conv to ``3 · heads · head_dim`` channels, laid out as
    ``[q | k | v]`` with each part split into ``heads`` consecutive groups of ``head_dim``; the
    attention weights are ``softmax(q kᵀ / √head_dim)`` over the ``H·W`` positions.
    ``head_dim=None`` splits ``channels`` evenly between the heads.
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        head_dim: int | None,
        norm_groups: int,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if channels % heads:
                raise ValueError(f"{channels} channels cannot be split between {heads} heads")
            head_dim = channels // heads
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.norm = GroupNorm(norm_groups, channels, eps=norm_eps)
        self.qkv = nn.Conv2d(channels, 3 * inner, 1)
        self.proj = zero_module(nn.Conv2d(inner, channels, 1))
        self.stacked_outputs = {"qkv": 3}  # q, k, v: three maps in one weight (train.muon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, self.head_dim, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (B, heads, N, d)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, self.heads * self.head_dim, h, w)
        return x + self.proj(out)


class LinearAttention(nn.Module):
    """Residual linear attention (Shen et al. 2021; "The Annotated Diffusion Model").

    With ``q, k, v`` from a bias-free 1x1 conv on ``GN(x)``: ``q`` is softmaxed over its feature
    dim and scaled by ``1/√head_dim``, ``k`` is softmaxed over the positions, the per-head context
    is ``k vᵀ`` (head_dim x head_dim) and the output ``contextᵀ q`` goes through a 1x1 conv and
    ``GroupNorm(1)``. The GroupNorm's scale is zero-initialised (zeroing the conv before a norm
    would not make the branch vanish stably).
    """

    def __init__(
        self,
        channels: int,
        *,
        heads: int,
        head_dim: int | None,
        norm_groups: int,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if channels % heads:
                raise ValueError(f"{channels} channels cannot be split between {heads} heads")
            head_dim = channels // heads
        self.heads = heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        inner = heads * head_dim
        self.norm = GroupNorm(norm_groups, channels, eps=norm_eps)
        self.qkv = nn.Conv2d(channels, 3 * inner, 1, bias=False)
        self.proj = nn.Conv2d(inner, channels, 1)
        self.stacked_outputs = {"qkv": 3}
        self.out_norm = GroupNorm(1, channels, eps=norm_eps)
        nn.init.zeros_(self.out_norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, self.head_dim, h * w)
        q, k, v = qkv.unbind(dim=1)  # (B, heads, d, N)
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        out = out.reshape(b, self.heads * self.head_dim, h, w)
        return x + self.out_norm(self.proj(out))


def make_attention(
    kind: str,
    channels: int,
    *,
    heads: int,
    head_dim: int | None,
    norm_groups: int,
    norm_eps: float = 1e-5,
) -> nn.Module | None:
    """Build the attention block named ``kind`` ("none" gives ``None``)."""
    if kind == "none":
        return None
    options = {"heads": heads, "head_dim": head_dim, "norm_groups": norm_groups}
    if kind == "full":
        return FullAttention(channels, **options, norm_eps=norm_eps)
    if kind == "linear":
        return LinearAttention(channels, **options, norm_eps=norm_eps)
    raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
