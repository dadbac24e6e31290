"""The GQA/MHA -> M²LA conversion math for one decoder layer (SPEC §9), as pure torch functions.

Stages, each a function here:

1. `linearize_qk_norm`: Qwen3 / Qwen3-VL apply a per-head RMSNorm to q and k before RoPE. It is not linear, so it is
   replaced by the best per-head affine map of the projected head (least squares on calibration activations, or a
   mean-scale fold); the other sources pass through unchanged. This is the only lossy step before stage 3.
2. `rorope_basis`: MLA rewrite + RoRoPE. For every 2-D frequency plane j an orthogonal G×G matrix U_j (PCA of the
   calibration keys in that plane, eigenvectors as rows) mixes the G KV heads. RoPE rotates inside a plane and U_j
   mixes across heads with the same coefficients on both coordinates of the plane, so the two commute and the change
   is exact once U_jᵀ is folded into each query head. A plane holds one frequency, hence one MRoPE axis: frequencies
   of different (T, H, W) axes are never mixed.
3. `build_m2la_layer`: the lossy step. Rotated head 0 (most key energy) becomes the one shared RoPE key k_pe
   (d_r = head_dim, stored pair-interleaved, SPEC §5.3); rotated heads 1..G-1 lose their rotation and become the
   shared non-RoPE key K_nope ((G-1)·d dims). [α·K_nope; V] ((G-1)·d + G·d dims) is factorised jointly by PCA of its
   calibration second moment to rank r (α balances K against V energy). Per head h of group g:
       q_nope_h = q_h                                   (d rows, zero-filled to d_n)
       W_UK_h   = Σ_{g'≥1} diag(U[g', g]) · P_K[g'] / α  (the head's view of the shared K_nope)
       W_UV_h   = P_V[g]
   and q is multiplied by sqrt((d_n + d_r) / d) so the M²LA softmax scale (d_n + d_r)^-0.5 gives the source scores.

Letters: D hidden size, H query heads, G KV heads, d source head_dim, F = d/2 frequency planes, r kv_lora_rank,
d_n / d_r / d_v the target nope / rope / value head widths, N calibration tokens. Weight matrices are "augmented"
[W | b] of shape [out, D + 1] so biases ride along with the weights; Σ = E[x̃ x̃ᵀ], x̃ = [x; 1], is the layer input's
second moment (D + 1 square). All math runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from transformers.models.llama.modeling_llama import rotate_half  # the rotate-half layout of every source

QK_NORM_TREATMENTS = ("lstsq", "scale", "none")


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis in fp32 (as transformers' Qwen/Llama RMSNorm), then the weight."""
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    out = x32.to(dtype)
    return out * weight.to(dtype) if weight is not None else out


def rope_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (transformers' Qwen/Llama layout: dims i and i + d/2 are the plane of frequency i)."""
    return x * cos + rotate_half(x) * sin


def augment(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """[out, D] weight and optional [out] bias -> [out, D + 1] float64 ([W | b], zeros when there is no bias)."""
    w = weight.double()
    b = bias.double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return torch.cat([w, b[:, None]], dim=1)


def split_augmented(w_aug: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return w_aug[:, :-1], w_aug[:, -1]


def interleave_permutation(d: int) -> torch.Tensor:
    """Index list p with stored[p] = rotate-half rows: stored row 2j <- row j, stored row 2j+1 <- row j + d/2.

    `modeling_internvideo3.deinterleave_rope_channels` undoes it (SPEC §5.3: stored rows (2j, 2j+1) form plane j).
    """
    half = torch.arange(d // 2)
    return torch.stack([half, half + d // 2], dim=1).reshape(-1)


def frequency_of_dim(d: int) -> torch.Tensor:
    """[d] long: the frequency plane of each rotate-half dim (i mod d/2)."""
    return torch.arange(d) % (d // 2)


# ----------------------------------------------------------------------------------------------------------------------
# Source attention weights of one layer
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class SourceAttention:
    """One source layer's attention tensors (float64). wq [H·d, D], wk/wv [G·d, D], wo [D, H·d]; biases or None;
    q_norm/k_norm [d] or None (Qwen3 QK-norm)."""

    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    wo: torch.Tensor
    num_heads: int
    num_kv_heads: int
    head_dim: int
    bq: torch.Tensor | None = None
    bk: torch.Tensor | None = None
    bv: torch.Tensor | None = None
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    eps: float = 1e-6

    @property
    def group_of_head(self) -> torch.Tensor:
        """[H] long: the KV head each query head reads (transformers' repeat_kv order)."""
        return torch.arange(self.num_heads) // (self.num_heads // self.num_kv_heads)

    @property
    def has_bias(self) -> bool:
        return any(b is not None for b in (self.bq, self.bk, self.bv))

    def to(self, dtype: torch.dtype) -> "SourceAttention":
        """A copy with every tensor cast to `dtype`."""
        return replace(self, **{f.name: getattr(self, f.name).to(dtype) for f in fields(self)
                                if torch.is_tensor(getattr(self, f.name))})


@dataclass
class LinearQK:
    """Affine query/key maps after stage 1: q = Wq̃ x̃ [H·d, D+1], k = Wk̃ x̃ [G·d, D+1], v = Wṽ x̃ [G·d, D+1].

    fit_error: relative MSE of the affine map against the true normalized q / k on the calibration tokens
    ({"q": float, "k": float}; 0 for sources without QK-norm)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    fit_error: dict = field(default_factory=lambda: {"q": 0.0, "k": 0.0})


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: QK-norm -> affine maps
# ----------------------------------------------------------------------------------------------------------------------


def _fit_head_norm(w_aug: torch.Tensor, norm_w: torch.Tensor, x_aug: torch.Tensor, heads: int, d: int, eps: float,
                   treatment: str, ridge: float = 1e-6) -> tuple[torch.Tensor, float]:
    """Replace y_h = RMSNorm(W_h x̃) ⊙ w by an affine map of x̃ per head. Returns (new [heads·d, D+1], rel. MSE).

    lstsq: y_h ≈ A_h (W_h x̃) + b_h, A_h [d, d] and b_h [d] fitted by least squares on the calibration tokens
           (d + 1 unknowns per output row, so a few hundred tokens suffice even at D = 4096).
    scale: y_h ≈ s_h · w ⊙ (W_h x̃), s_h = mean over tokens of 1 / rms(W_h x̃) (folds the weight and the mean scale).
    none:  y_h ≈ w ⊙ (W_h x̃) (folds the weight only; TransMLA's naive treatment).
    """
    if treatment not in QK_NORM_TREATMENTS:
        raise ValueError(f"unknown QK-norm treatment {treatment!r}; choose from {QK_NORM_TREATMENTS}")
    proj = (x_aug @ w_aug.T).view(-1, heads, d)  # [N, heads, d] pre-norm
    target = rms_norm(proj, norm_w, eps)  # [N, heads, d] true normalized
    rows, approx = [], []
    for h in range(heads):
        w_h, p_h = w_aug[h * d : (h + 1) * d], proj[:, h]  # [d, D+1], [N, d]
        if treatment == "lstsq":
            design = torch.cat([p_h, torch.ones_like(p_h[:, :1])], dim=1)  # [N, d+1]
            gram = design.T @ design
            gram += ridge * gram.diagonal().mean() * torch.eye(d + 1, dtype=gram.dtype)
            coef = torch.linalg.solve(gram, design.T @ target[:, h]).T  # [d, d+1]: [A_h | b_h]
            new = coef[:, :d] @ w_h
            new[:, -1] += coef[:, d]
            approx.append(design @ coef.T)
        else:
            scale = norm_w * (torch.rsqrt(p_h.pow(2).mean(-1) + eps).mean() if treatment == "scale" else 1.0)  # [d]
            new = scale[:, None] * w_h
            approx.append(p_h * scale)
        rows.append(new)
    # The fitted outputs come from `proj` per head: no second pass over the [N, D+1] activations.
    error = float((torch.stack(approx, 1) - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-30))
    return torch.cat(rows), error


def linearize_qk_norm(src: SourceAttention, x_calib: torch.Tensor | None, treatment: str = "lstsq") -> LinearQK:
    """Stage 1 (SPEC §9.4). x_calib [N, D] are the layer's attention inputs (after input_layernorm) on calibration
    text; needed only when the source has QK-norm. Returns the affine q/k/v maps."""
    q = augment(src.wq, src.bq)
    k = augment(src.wk, src.bk)
    v = augment(src.wv, src.bv)
    if src.q_norm is None and src.k_norm is None:
        return LinearQK(q, k, v)
    if x_calib is None:
        raise ValueError("a QK-norm source needs calibration activations to linearize q_norm / k_norm")
    x_aug = torch.cat([x_calib.double(), torch.ones(x_calib.shape[0], 1, dtype=torch.float64)], dim=1)
    errors = {"q": 0.0, "k": 0.0}
    d = src.head_dim
    if src.q_norm is not None:
        q, errors["q"] = _fit_head_norm(q, src.q_norm.double(), x_aug, src.num_heads, d, src.eps, treatment)
    if src.k_norm is not None:
        k, errors["k"] = _fit_head_norm(k, src.k_norm.double(), x_aug, src.num_kv_heads, d, src.eps, treatment)
    return LinearQK(q, k, v, errors)


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2: RoRoPE
# ----------------------------------------------------------------------------------------------------------------------


def key_plane_covariance(k_aug: torch.Tensor, sigma: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """Per frequency plane j, the G×G second moment of the KV heads' keys summed over the plane's two coordinates.

    k_aug [G·d, D+1], sigma [D+1, D+1] -> [F, G, G]."""
    G, d, F = num_kv_heads, head_dim, head_dim // 2
    w = k_aug.view(G, d, -1)
    cov = torch.einsum("gic,ce,hie->igh", w, sigma, w)  # [d, G, G] per coordinate
    return cov[:F] + cov[F:]


def rorope_basis(plane_cov: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Orthogonal U [F, G, G] per plane, rows = eigenvectors of the plane covariance in decreasing energy (row 0 is
    the kept RoPE head). `enabled=False` gives the identity (source KV head 0 kept; the "no RoRoPE" ablation)."""
    F, G, _ = plane_cov.shape
    if not enabled:
        return torch.eye(G, dtype=torch.float64).expand(F, G, G).clone()
    evals, evecs = torch.linalg.eigh(plane_cov)  # ascending, columns
    order = evals.argsort(dim=-1, descending=True)
    evecs = torch.gather(evecs, 2, order[:, None, :].expand(F, G, G))
    return evecs.transpose(1, 2).contiguous()  # rows = eigenvectors


def rorope_coefficients(U: torch.Tensor, group_of_head: torch.Tensor) -> torch.Tensor:
    """c [G', H, d]: query head h's weight on rotated key head g' at each rotate-half dim, c = U[f(i), g', g(h)]."""
    d = 2 * U.shape[0]
    u_dims = U[frequency_of_dim(d)]  # [d, G', G]
    return u_dims[:, :, group_of_head].permute(1, 2, 0).contiguous()  # [G', H, d]


def rotate_keys(k: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """k [..., G, d] (rotate-half layout, before or after RoPE) -> rotated heads k' [..., G', d], k'_{g'} = Σ_g U k_g."""
    d = k.shape[-1]
    u_dims = U[frequency_of_dim(d)].to(k.dtype)  # [d, G', G]
    return torch.einsum("igh,...hi->...gi", u_dims, k)


# ----------------------------------------------------------------------------------------------------------------------
# Stage 3: shared RoPE key, joint low-rank [K_nope; V], M²LA weights
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class M2LAWeights:
    """Target tensors of one layer (SPEC §3), float64. Biases are None when `with_bias` is False."""

    q_proj_weight: torch.Tensor
    q_proj_bias: torch.Tensor | None
    kv_a_weight: torch.Tensor
    kv_a_bias: torch.Tensor | None
    kv_b_weight: torch.Tensor
    o_proj_weight: torch.Tensor
    stats: dict


def _rotated_key_weights(k_aug: torch.Tensor, U: torch.Tensor, G: int, d: int) -> torch.Tensor:
    """[G'·d, D+1] augmented weights of the rotated key heads k' = U k."""
    return rotate_keys(k_aug.view(G, d, -1).permute(2, 0, 1), U).permute(1, 2, 0).reshape(G * d, -1)


def build_m2la_layer(
    src: SourceAttention,
    lin: LinearQK,
    sigma: torch.Tensor,
    U: torch.Tensor,
    kv_lora_rank: int,
    qk_nope_head_dim: int,
    qk_rope_head_dim: int,
    v_head_dim: int,
    balance: bool = True,
    with_bias: bool = True,
) -> M2LAWeights:
    """Stage 3: the M²LA tensors of one layer from the affine maps `lin`, the layer input moment `sigma` [D+1, D+1]
    and the RoRoPE basis U [F, G, G]. Exact when G = 1 and r = d (and the source has no QK-norm). `with_bias=False`
    drops the (then all-zero) biases; the caller decides it once for all layers so every layer has the same keys.

    Raises:
        ValueError: a rank above (G-1)·d + G·d, d_r ≠ d, or d_n / d_v narrower than d.
    """
    H, G, d = src.num_heads, src.num_kv_heads, src.head_dim
    D = src.wq.shape[1]
    d_n, d_r, d_v, r = qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank
    if d_r != d:
        raise ValueError(f"qk_rope_head_dim (--rope-dim) must equal the source head_dim {d} (the shared RoPE key is "
                         f"one rotated head with all {d // 2} source frequencies), got {d_r}")
    if d_v < d:
        raise ValueError(f"v_head_dim {d_v} is narrower than the source head_dim {d}")
    if G > 1 and d_n < d:
        raise ValueError(f"qk_nope_head_dim {d_n} is narrower than the source head_dim {d}: the per-head non-RoPE "
                         f"query is the source query q_h ({d} dims)")
    n_k, n_v = (G - 1) * d, G * d
    if not 0 < r <= n_k + n_v:
        raise ValueError(f"kv_lora_rank {r} is not in 1..{n_k + n_v} = (G-1)·d + G·d for G={G}, d={d}")
    group = src.group_of_head
    c = rorope_coefficients(U, group)  # [G', H, d]
    scale = ((d_n + d_r) / d) ** 0.5

    # Keys: rotated heads, head 0 -> shared RoPE key, heads 1.. -> shared non-RoPE key.
    k_rot = _rotated_key_weights(lin.k, U, G, d)  # [G·d, D+1]
    k_pe = k_rot[:d]
    k_nope = k_rot[d:]  # [(G-1)·d, D+1]

    # Joint low-rank [α K_nope; V]. One second moment of all rotated keys and values [(2G)·d, (2G)·d] gives every
    # block needed below (one pass over the [D+1, D+1] moment, the costly product at D = 4096).
    kv = torch.cat([k_rot, lin.v])  # [2G·d, D+1]
    cov_all = kv @ sigma @ kv.T
    energy = cov_all.diagonal()
    key_total, rope_energy = float(energy[: G * d].sum()), float(energy[:d].sum())
    e_k, e_v = float(energy[d : G * d].sum()), float(energy[G * d :].sum())
    alpha = (e_v / e_k) ** 0.5 if (balance and n_k and e_k > 0) else 1.0
    weight = torch.cat([torch.full((n_k,), alpha, dtype=torch.float64), torch.ones(n_v, dtype=torch.float64)])
    z = torch.cat([alpha * k_nope, lin.v])  # [n, D+1]
    cov = cov_all[d:, d:] * weight[:, None] * weight[None, :]  # [n, n] = z Σ zᵀ
    evals, evecs = torch.linalg.eigh(cov)
    order = evals.argsort(descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    P = evecs[:, :r]  # [n, r]
    latent = P.T @ z  # [r, D+1]
    P_K, P_V = P[:n_k] / alpha, P[n_k:]

    # Per-head up-projections.
    kv_b = torch.zeros(H, d_n + d_v, r, dtype=torch.float64)
    for h in range(H):
        if G > 1:
            w_uk = torch.einsum("gi,gir->ir", c[1:, h], P_K.view(G - 1, d, r))  # [d, r]
            kv_b[h, :d] = w_uk
        g = int(group[h])
        kv_b[h, d_n : d_n + d] = P_V[g * d : (g + 1) * d]

    # Queries: nope = q_h (zero-filled to d_n), pe = c[0] ⊙ q_h (pair-interleaved); all times the scale fix.
    perm = interleave_permutation(d)
    q_heads = lin.q.view(H, d, -1)
    q_new = torch.zeros(H, d_n + d_r, D + 1, dtype=torch.float64)
    if G > 1:
        q_new[:, :d] = q_heads
    q_new[:, d_n:] = (c[0][:, :, None] * q_heads)[:, perm]
    q_new = (q_new * scale).reshape(H * (d_n + d_r), D + 1)

    kv_a = torch.cat([latent, k_pe[perm]])  # [r + d_r, D+1]
    wo = src.wo.double().view(-1, H, d)
    o_new = torch.zeros(wo.shape[0], H, d_v, dtype=torch.float64)
    o_new[..., :d] = wo
    o_new = o_new.reshape(-1, H * d_v)

    # Statistics (from second moments, no extra pass over the data).
    residual = cov - P @ (P.T @ cov @ P) @ P.T
    res_diag = residual.diagonal()
    stats = {
        "rank": r,
        "full_rank": n_k + n_v,
        "alpha": alpha,
        "kept_energy": float(evals[:r].sum() / evals.sum().clamp_min(1e-30)),
        "k_nope_rel_error": float(res_diag[:n_k].sum() / max(cov.diagonal()[:n_k].sum(), 1e-30)) if n_k else 0.0,
        "v_rel_error": float(res_diag[n_k:].sum() / cov.diagonal()[n_k:].sum().clamp_min(1e-30)),
        "rope_key_energy": rope_energy / max(key_total, 1e-30),
        "qk_norm_fit_error_q": lin.fit_error["q"],
        "qk_norm_fit_error_k": lin.fit_error["k"],
    }
    qw, qb = split_augmented(q_new)
    aw, ab = split_augmented(kv_a)
    return M2LAWeights(
        q_proj_weight=qw,
        q_proj_bias=qb if with_bias else None,
        kv_a_weight=aw,
        kv_a_bias=ab if with_bias else None,
        kv_b_weight=kv_b.reshape(H * (d_n + d_v), r),
        o_proj_weight=o_new,
        stats=stats,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Reference attentions (tests and the per-layer output error)
# ----------------------------------------------------------------------------------------------------------------------


def source_attention(src: SourceAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The source GQA attention (with QK-norm if any). x [B, S, D], cos/sin [B, S, d] rotate-half -> [B, S, D]."""
    return rorope_attention(src, x, cos, sin, U=None)


def rorope_attention(src: SourceAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     U: torch.Tensor | None) -> torch.Tensor:
    """Stages 1-2 without the lossy step (SPEC §9.5): GQA written as MLA over the G rotated key heads k' = U k, every
    one still rotated by RoPE, each query head h reading head g' with coefficients U[f, g', g(h)]. Exact for any
    orthogonal U (U=None: the plain source attention). x [B, S, D] -> [B, S, D], computed in x's dtype."""
    B, S, _ = x.shape
    H, G, d = src.num_heads, src.num_kv_heads, src.head_dim
    dt = x.dtype
    lin = lambda w, b: x @ w.to(dt).T + (b.to(dt) if b is not None else 0)  # noqa: E731
    q = lin(src.wq, src.bq).view(B, S, H, d)
    k = lin(src.wk, src.bk).view(B, S, G, d)
    v = lin(src.wv, src.bv).view(B, S, G, d)
    if src.q_norm is not None:
        q = rms_norm(q, src.q_norm.to(dt), src.eps)
    if src.k_norm is not None:
        k = rms_norm(k, src.k_norm.to(dt), src.eps)
    cos4, sin4 = cos[:, :, None].to(dt), sin[:, :, None].to(dt)
    if U is None:
        q = rope_rotate_half(q, cos4, sin4)
        k = rope_rotate_half(k, cos4, sin4)
        k = k[:, :, src.group_of_head]  # [B, S, H, d]
    else:
        c = rorope_coefficients(U, src.group_of_head).to(dt)  # [G', H, d]
        k_rot = rotate_keys(k, U)  # [B, S, G', d]
        q_big = c.permute(1, 0, 2)[None, None] * q[:, :, :, None]  # [B, S, H, G', d]
        q = rope_rotate_half(q_big, cos4[..., None, :], sin4[..., None, :]).reshape(B, S, H, G * d)
        k = rope_rotate_half(k_rot, cos4, sin4).reshape(B, S, 1, G * d).expand(B, S, H, G * d)
    v = v[:, :, src.group_of_head]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=d**-0.5
    )  # [B, H, S, d]
    return out.transpose(1, 2).reshape(B, S, H * d) @ src.wo.to(dt).T
