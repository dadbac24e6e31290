"""The GQA/MHA -> M²LA conversion math for one decoder layer (SPEC §9), as pure torch functions.

Stages, each a function here:

1. `linearize_qk_norm`: Qwen3 / Qwen3-VL apply a per-head RMSNorm to q and k before RoPE. It is not linear, so it is
   replaced by the best affine map of the layer input or of the projected head (least squares on calibration
   activations, or a mean-scale fold); the other sources pass through unchanged. q_norm may instead stay exact
   (`build_m2la_layer(exact_q_norm=True)`: queries are never cached). This is the only lossy step before stage 3.
2. `rorope_basis`: MLA rewrite + RoRoPE. For every 2-D frequency plane j an orthogonal G×G matrix U_j (PCA of the
   calibration keys in that plane, eigenvectors as rows) mixes the G KV heads. RoPE rotates inside a plane and U_j
   mixes across heads with the same coefficients on both coordinates of the plane, so the two commute and the change
   is exact once U_jᵀ is folded into each query head. A plane holds one frequency, hence one MRoPE axis: frequencies
   of different (T, H, W) axes are never mixed.
3. `select_rope_components` + `build_m2la_layer`: the lossy step. d_r / 2 of the G·d/2 rotated components (g', j)
   (rotated head g', frequency plane j) stay rotated in the shared RoPE key k_pe (stored pair-interleaved, SPEC
   §5.3; d_r = d with rotated head 0 of every plane is the original RoRoPE layout); the other G·d − d_r dims lose
   their rotation and become the shared non-RoPE key K_nope. [α·K_nope; V] ((G·d − d_r) + G·d dims) is factorised
   jointly by PCA of its calibration second moment to rank r (α balances K against V energy). Per head h of group g:
       q_nope_h = q_h                                          (d rows, zero-filled to d_n)
       W_UK_h   = Σ_{n ∈ K_nope} U[f(n), g'(n), g] · P_K[n] / α  (row i(n): the head's view of the shared K_nope)
       q_pe_h   = U[f(p), g'(p), g] · q_h[i(p)] for each RoPE channel p
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

QK_NORM_TREATMENTS = ("lstsq", "lstsq-input", "scale", "none")


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------------


def rope_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (transformers' Qwen/Llama layout: dims i and i + d/2 are the plane of frequency i)."""
    # imported here: transformers' modeling import takes seconds, and a CLI error must not wait for it
    from transformers.models.llama.modeling_llama import rotate_half  # the rotate-half layout of every source

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
    lstsq-input: y ≈ A x̃, A [heads·d, D+1] fitted on the whole layer input (D + 1 unknowns per row: needs
           calibration tokens well above D; ridge 1e-4 of the mean diagonal).
    scale: y_h ≈ s_h · w ⊙ (W_h x̃), s_h = mean over tokens of 1 / rms(W_h x̃) (folds the weight and the mean scale).
    none:  y_h ≈ w ⊙ (W_h x̃) (folds the weight only; TransMLA's naive treatment).
    """
    if treatment not in QK_NORM_TREATMENTS:
        raise ValueError(f"unknown QK-norm treatment {treatment!r}; choose from {QK_NORM_TREATMENTS}")
    from modeling_internvideo3 import rms_norm  # here: transformers' modeling import takes seconds (CLI errors first)

    proj = (x_aug @ w_aug.T).view(-1, heads, d)  # [N, heads, d] pre-norm
    target = rms_norm(proj, norm_w.to(proj.dtype), eps)  # [N, heads, d] true normalized
    if treatment == "lstsq-input":
        # y ≈ A x̃ with A [heads·d, D+1] fitted on the whole layer input: the norm's 1/rms depends on x beyond the
        # head's own d coordinates. The ridge keeps it defined when there are fewer tokens than D + 1.
        gram = x_aug.T @ x_aug
        gram += ridge * 1e2 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
        flat = target.reshape(len(x_aug), -1)
        new = torch.linalg.solve(gram, x_aug.T @ flat).T  # [heads·d, D+1]
        return new, float((x_aug @ new.T - flat).pow(2).sum() / flat.pow(2).sum().clamp_min(1e-30))
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


ROPE_SELECTIONS = ("qk", "key", "uniform")


def select_rope_components(U: torch.Tensor, plane_cov: torch.Tensor, rope_dim: int, rule: str = "qk",
                           q_heads: torch.Tensor | None = None, sigma: torch.Tensor | None = None,
                           group_of_head: torch.Tensor | None = None) -> list[tuple[int, int]]:
    """Which rotated key components keep their rotation in the shared RoPE key of width `rope_dim` (even, at most
    G·d): a list of rope_dim / 2 pairs (g', j), rotated head g' of frequency plane j, sorted by (j, g').

    The candidates are the G·F components of the RoRoPE basis U [F, G, G] (rotated head g' of plane j has key
    energy λ[j, g'] = (U Σ_j Uᵀ)[g', g'] from `plane_cov` [F, G, G]). Rules:
        uniform: rotated heads in basis order, each over all planes (head 0 of every plane first, planes of most
                 energy first), so rope_dim = d gives one rotated head with all d/2 frequencies (the original
                 RoRoPE layout; with the identity basis, source KV head 0).
        key:     the rope_dim / 2 components of most key energy over all planes.
        qk:      the most score energy λ[j, g'] · Σ_h U[j, g', g(h)]² · E‖q_h,j‖² (query energy of plane j read by
                 the heads through U), MHA2MLA's ‖q‖·‖k‖ contribution criterion (Ji et al. 2025, arXiv:2502.14837)
                 applied to the rotated components; needs q_heads [H, d, D+1], sigma and group_of_head.

    Raises:
        ValueError: an unknown rule, or rope_dim odd, below 2 or above G·d.
    """
    F, G, _ = U.shape
    if rule not in ROPE_SELECTIONS:
        raise ValueError(f"unknown RoPE selection rule {rule!r}; choose from {ROPE_SELECTIONS}")
    if rope_dim % 2 or not 2 <= rope_dim <= 2 * F * G:
        raise ValueError(f"rope_dim {rope_dim} must be even and in 2..G·d = {2 * F * G}")
    key_energy = (U @ plane_cov @ U.transpose(1, 2)).diagonal(dim1=1, dim2=2)  # [F, G']
    if rule == "uniform":
        plane_rank = key_energy.argsort(dim=0, descending=True).argsort(dim=0)  # [F, G']: plane's rank per head
        score = -(torch.arange(G)[None, :] * F + plane_rank).double()
    elif rule == "key":
        score = key_energy
    else:
        q_energy = ((q_heads @ sigma) * q_heads).sum(-1)  # [H, d]
        q_plane = q_energy[:, :F] + q_energy[:, F:]  # [H, F]
        u2 = U[:, :, group_of_head].pow(2)  # [F, G', H]
        score = key_energy * torch.einsum("fgh,hf->fg", u2, q_plane)
    flat = score.reshape(-1).argsort(descending=True)[: rope_dim // 2].tolist()  # index j·G + g'
    return sorted(((i % G, i // G) for i in flat), key=lambda c: (c[1], c[0]))


def exact_rope_components(num_kv_heads: int, head_dim: int) -> list[tuple[int, int]]:
    """Every rotated key component in source-head order, [(g, j) for g in range(G) for j in range(d/2)]: with the
    identity basis, k_pe (d_r = G·d, stored pair-interleaved) is then the G source KV heads' keys one block of head_dim
    channels after the other, the planes repeat the source frequencies once per KV head, and each query head's q_pe
    is its source query in its group's block, zeros elsewhere (SPEC §9.4, the equal-cache exact form)."""
    return [(g, j) for g in range(num_kv_heads) for j in range(head_dim // 2)]


@dataclass
class M2LAWeights:
    """Target tensors of one layer (SPEC §3), float64. Biases are None when `with_bias` is False; q_norm_weight [d]
    only with `exact_q_norm`, k_norm_weight [d] (pair-interleaved) only with `exact_k_norm`; rope_planes: the source
    frequency plane of each of the d_r / 2 RoPE planes."""

    q_proj_weight: torch.Tensor
    q_proj_bias: torch.Tensor | None
    kv_a_weight: torch.Tensor
    kv_a_bias: torch.Tensor | None
    kv_b_weight: torch.Tensor
    o_proj_weight: torch.Tensor
    stats: dict
    q_norm_weight: torch.Tensor | None = None
    rope_planes: list | None = None
    k_norm_weight: torch.Tensor | None = None


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
    rope_components: list | None = None,
    exact_q_norm: bool = False,
    exact_k_norm: bool = False,
) -> M2LAWeights:
    """Stage 3: the M²LA tensors of one layer from the affine maps `lin`, the layer input moment `sigma` [D+1, D+1]
    and the RoRoPE basis U [F, G, G]. `with_bias=False` drops the (then all-zero) biases; the caller decides it once
    for all layers so every layer has the same keys.

    rope_components: the (g', j) rotated key components that stay rotated in the shared RoPE key (d_r / 2 of them,
    `select_rope_components`); default, for d_r = d: rotated head 0 of every plane. Its rotate-half channels p and
    p + d_r/2 are component p's two coordinates. Every other component of k' = U k joins [K_nope; V] unrotated.
    exact_q_norm: keep the source's q_norm as the runtime module `q_norm` (weight κ·w, returned as q_norm_weight):
    q_nope[:d] is the raw source query, the q_pe rows carry w. Otherwise q is `lin.q` (the stage-1 fit).
    exact_k_norm: keep the source's k_norm as the runtime module `k_norm` (weight returned as k_norm_weight, in the
    pair-interleaved order of a k_pe block): needs every key component rotated in source-head order,
    rope_components = [(g, j) for g in range(G) for j in range(d/2)] with U the identity (`exact_rope_components`),
    so k_pe block g is source KV head g's raw key and the module normalises it per block before RoPE (SPEC §9.4).
    Exact when every key component is rotated (d_r = G·d), r = (G·d − d_r) + G·d, and the source has no k_norm or
    `exact_k_norm` keeps it.

    Raises:
        ValueError: a rank above (G·d − d_r) + G·d, components that do not match d_r, or d_n / d_v narrower than d;
            `exact_k_norm` without a source k_norm, the identity basis and `exact_rope_components`.
    """
    H, G, d = src.num_heads, src.num_kv_heads, src.head_dim
    F, D = d // 2, src.wq.shape[1]
    d_n, d_r, d_v, r = qk_nope_head_dim, qk_rope_head_dim, v_head_dim, kv_lora_rank
    if rope_components is None:
        if d_r != d:
            raise ValueError(f"qk_rope_head_dim {d_r} differs from head_dim {d}: pass rope_components")
        rope_components = [(0, j) for j in range(F)]
    k_norm_weight = None
    if exact_k_norm:
        identity = torch.equal(U, torch.eye(G, dtype=U.dtype).expand_as(U))
        if src.k_norm is None or not identity or list(rope_components) != exact_rope_components(G, d):
            raise ValueError("exact_k_norm needs a source k_norm, the identity basis U and the components "
                             "exact_rope_components(G, d) (every key component rotated, in source-head order)")
        # The raw keys go into k_pe; the module normalises each source head's block (stored pair-interleaved).
        lin = replace(lin, k=augment(src.wk, src.bk))
        k_norm_weight = src.k_norm.double()[interleave_permutation(d)]
    if 2 * len(rope_components) != d_r or len(set(rope_components)) != len(rope_components):
        raise ValueError(f"{len(rope_components)} distinct RoPE components needed for qk_rope_head_dim {d_r}")
    if d_v < d:
        raise ValueError(f"v_head_dim {d_v} is narrower than the source head_dim {d}")
    first = torch.tensor([g * d + j for g, j in rope_components], dtype=torch.long)
    pe_dims = torch.cat([first, first + F])  # rotated-key dims of the RoPE key, rotate-half layout
    nope = torch.ones(G * d, dtype=torch.bool)
    nope[pe_dims] = False
    nope_dims = nope.nonzero().squeeze(1)  # rotated-key dims that lose their rotation
    n_k, n_v = len(nope_dims), G * d
    if (n_k or exact_q_norm) and d_n < d:
        raise ValueError(f"qk_nope_head_dim {d_n} is narrower than the source head_dim {d}: the per-head non-RoPE "
                         f"query is the source query q_h ({d} dims)")
    if not 0 < r <= n_k + n_v:
        raise ValueError(f"kv_lora_rank {r} is not in 1..{n_k + n_v} = (G·d − d_r) + G·d for G={G}, d={d}, "
                         f"d_r={d_r}")
    group = src.group_of_head
    c = rorope_coefficients(U, group).permute(1, 0, 2).reshape(H, G * d)  # [H, G'·d]: head h on rotated dim n
    scale = ((d_n + d_r) / d) ** 0.5

    # Keys: rotated heads k' = U k; the chosen components -> shared RoPE key, the rest -> shared non-RoPE key.
    k_rot = _rotated_key_weights(lin.k, U, G, d)  # [G·d, D+1]

    # Joint low-rank [α K_nope; V]. One second moment of all rotated keys and values [(2G)·d, (2G)·d] gives every
    # block needed below (one pass over the [D+1, D+1] moment, the costly product at D = 4096).
    kv = torch.cat([k_rot, lin.v])  # [2G·d, D+1]
    cov_all = kv @ sigma @ kv.T
    energy = cov_all.diagonal()
    key_total, rope_energy = float(energy[: G * d].sum()), float(energy[pe_dims].sum())
    e_k, e_v = float(energy[nope_dims].sum()), float(energy[G * d :].sum())
    alpha = (e_v / e_k) ** 0.5 if (balance and n_k and e_k > 0) else 1.0
    weight = torch.cat([torch.full((n_k,), alpha, dtype=torch.float64), torch.ones(n_v, dtype=torch.float64)])
    z_dims = torch.cat([nope_dims, G * d + torch.arange(n_v)])
    z = torch.cat([alpha * k_rot[nope_dims], lin.v])  # [n, D+1]
    cov = cov_all[z_dims][:, z_dims] * weight[:, None] * weight[None, :]  # [n, n] = z Σ zᵀ
    evals, evecs = torch.linalg.eigh(cov)
    order = evals.argsort(descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    P = evecs[:, :r]  # [n, r]
    latent = P.T @ z  # [r, D+1]
    P_K, P_V = P[:n_k] / alpha, P[n_k:]

    # Per-head up-projections: W_UK_h row i collects head h's coefficients on the un-rotated dims of its plane.
    kv_b = torch.zeros(H, d_n + d_v, r, dtype=torch.float64)
    for h in range(H):
        if n_k:
            kv_b[h, :d].index_add_(0, nope_dims % d, c[h, nope_dims][:, None] * P_K)
        g = int(group[h])
        kv_b[h, d_n : d_n + d] = P_V[g * d : (g + 1) * d]

    # Queries: nope = q_h (zero-filled to d_n), pe = the head's coefficients on the RoPE key's components
    # (pair-interleaved); the softmax-scale fix κ = sqrt((d_n + d_r) / d) on all of it (in q_norm's weight if exact).
    perm = interleave_permutation(d_r)
    q_norm_weight = None
    if exact_q_norm and src.q_norm is not None:
        raw = augment(src.wq, src.bq).view(H, d, -1)
        q_nope, q_eff = raw, raw * src.q_norm.double()[None, :, None]
        q_norm_weight = scale * src.q_norm.double()
    else:
        q_eff = lin.q.view(H, d, -1)
        q_nope = q_eff * scale
    q_new = torch.zeros(H, d_n + d_r, D + 1, dtype=torch.float64)
    if n_k or q_norm_weight is not None:
        q_new[:, :d] = q_nope
    q_new[:, d_n:] = (scale * c[:, pe_dims][:, :, None] * q_eff[:, pe_dims % d])[:, perm]
    q_new = q_new.reshape(H * (d_n + d_r), D + 1)

    kv_a = torch.cat([latent, k_rot[pe_dims][perm]])  # [r + d_r, D+1]
    wo = src.wo.double().view(-1, H, d)
    o_new = torch.zeros(wo.shape[0], H, d_v, dtype=torch.float64)
    o_new[..., :d] = wo
    o_new = o_new.reshape(-1, H * d_v)

    # Statistics (from second moments, no extra pass over the data).
    residual = cov - P @ (P.T @ cov @ P) @ P.T
    res_diag = residual.diagonal()
    k_nope_error = float(res_diag[:n_k].sum() / max(cov.diagonal()[:n_k].sum(), 1e-30)) if n_k else 0.0
    v_error = float(res_diag[n_k:].sum() / cov.diagonal()[n_k:].sum().clamp_min(1e-30))
    key_in_rope = rope_energy / max(key_total, 1e-30)
    key_in_latent = e_k * (1.0 - k_nope_error) / max(key_total, 1e-30)
    stats = {
        "rank": r,
        "full_rank": n_k + n_v,
        "rope_dim": d_r,
        "alpha": alpha,
        "kept_energy": float(evals[:r].sum() / evals.sum().clamp_min(1e-30)),
        "k_nope_rel_error": k_nope_error,
        "v_rel_error": v_error,
        "rope_key_energy": key_in_rope,
        # Where each part's second moment E[x²] (over the calibration tokens, of the keys as the layer computes
        # them after stage 1 and RoRoPE) goes: the RoPE key keeps its share rotated, the latent keeps the rest up
        # to its K_nope error; values live only in the latent (issue 27, item 4).
        "key_energy_kept": key_in_rope + key_in_latent,
        "key_energy_in_rope": key_in_rope,
        "key_energy_in_latent": key_in_latent,
        "value_energy_kept": 1.0 - v_error,
        "qk_norm_fit_error_q": 0.0 if q_norm_weight is not None else lin.fit_error["q"],
        "qk_norm_fit_error_k": 0.0 if k_norm_weight is not None else lin.fit_error["k"],
        "k_norm_exact": k_norm_weight is not None,
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
        q_norm_weight=q_norm_weight,
        rope_planes=[j for _, j in rope_components],
        k_norm_weight=k_norm_weight,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Reference attentions (tests and the per-layer output error)
# ----------------------------------------------------------------------------------------------------------------------


def rorope_attention(src: SourceAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     U: torch.Tensor | None) -> torch.Tensor:
    """Stages 1-2 without the lossy step (SPEC §9.5): GQA written as MLA over the G rotated key heads k' = U k, every
    one still rotated by RoPE, each query head h reading head g' with coefficients U[f, g', g(h)]. Exact for any
    orthogonal U (U=None: the plain source attention). x [B, S, D] -> [B, S, D], computed in x's dtype."""
    from modeling_internvideo3 import rms_norm  # here: transformers' modeling import takes seconds (CLI errors first)

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
