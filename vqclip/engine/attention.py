"""Self-attention over batch-first tokens with each projection as one matrix product.

torch's `nn.MultiheadAttention` with `batch_first=True` transposes its input to (tokens, batch,
width) and projects that strided view. When the projection weights are frozen (as a guide's are:
only the image needs gradients), `matmul` does not fold such a view into one matrix product: it
multiplies per token position, copying the weight once per position first (ViT-B/32: 50 copies of
the 768x2304 input projection per layer, forward and backward). `PackedSelfAttention` computes the
same attention from the contiguous batch-first tokens, so each projection is one matrix product,
and leaves every case it does not cover to torch's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PackedSelfAttention(nn.MultiheadAttention):
    """`nn.MultiheadAttention` whose batch-first self-attention projects all tokens in one matrix product."""

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        packable = (
            self.batch_first
            and query is key is value
            and query.dim() == 3
            and key_padding_mask is None
            and not need_weights
            and not is_causal
            and (attn_mask is None or attn_mask.is_floating_point())
            and self._qkv_same_embed_dim
            and self.bias_k is None
            and not self.add_zero_attn
        )
        if not packable:
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        batch, tokens, width = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        attended = attended.transpose(1, 2).reshape(batch, tokens, width)
        return F.linear(attended, self.out_proj.weight, self.out_proj.bias), None


def pack_attention(model: nn.Module, packed: bool) -> None:
    """Switch every multi-head attention of `model` to `PackedSelfAttention` (or back to torch's own), in place.

    Only the class changes: parameters, state dict and outputs (to rounding) stay the same.
    """
    kind = PackedSelfAttention if packed else nn.MultiheadAttention
    for module in model.modules():
        if type(module) in (nn.MultiheadAttention, PackedSelfAttention):
            module.__class__ = kind
