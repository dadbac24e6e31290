"""Absorbed M²LA attention over the latent cache (SPEC §4, §10).

Shapes: B batch, H heads, S query length, T cached length, r `kv_lora_rank`, d_r `qk_rope_head_dim`.
This file must stay self-contained (imports: torch, and triton under a guard): the Hub export copies it flat.
"""

from __future__ import annotations

import torch


def absorbed_attention_torch(
    q_lat: torch.Tensor,
    q_pe: torch.Tensor,
    ckv: torch.Tensor,
    k_pe: torch.Tensor,
    softmax_scale: float,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of absorbed queries over the latent cache, reference torch path (SPEC §4 "Decode with weight absorption").

    Args:
        q_lat: [B, H, S, r] queries already multiplied by W_UK (`q_nope @ W_UK`).
        q_pe: [B, H, S, d_r] rotated RoPE queries.
        ckv: [B, T, r] cached latents c.
        k_pe: [B, T, d_r] cached shared RoPE keys (after rotation).
        softmax_scale: multiplies the logits (M²LA: (qk_nope_head_dim + qk_rope_head_dim) ** -0.5).
        attn_mask: None, bool [B, 1 or H, S, T] (True = attend) or additive float of the same shape.

    Returns:
        o_lat: [B, H, S, r] in q_lat's dtype; multiply by W_UV to get per-head values.
    """
    B, H, S, r = q_lat.shape
    # Heads fold into the query axis so the single latent "key head" is read once per batch row (MQA trick).
    scores = torch.matmul(q_lat.reshape(B, H * S, r), ckv.transpose(1, 2))
    scores = scores + torch.matmul(q_pe.reshape(B, H * S, -1), k_pe.transpose(1, 2))
    scores = scores.view(B, H, S, -1).float() * softmax_scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    probs = torch.softmax(scores, dim=-1).to(ckv.dtype)
    return torch.matmul(probs.view(B, H * S, -1), ckv).view(B, H, S, r).to(q_lat.dtype)


def latent_attention_decode(
    q_lat: torch.Tensor,
    q_pe: torch.Tensor,
    ckv: torch.Tensor,
    k_pe: torch.Tensor,
    softmax_scale: float,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatch the absorbed attention to the fastest available path (same contract as `absorbed_attention_torch`)."""
    return absorbed_attention_torch(q_lat, q_pe, ckv, k_pe, softmax_scale, attn_mask)
