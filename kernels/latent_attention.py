"""Absorbed M²LA attention over the latent cache: a torch path and a Triton decode kernel (SPEC §4, §10).

Shapes: B batch, H heads, S query length, T cached length, r `kv_lora_rank`, d_r `qk_rope_head_dim`.
This file must stay self-contained (imports: torch, and triton under a guard): the Hub export copies it flat.

Backends of `latent_attention_decode`:
    torch   `absorbed_attention_torch`, batched matmuls; default on CPU, the reference for the kernel.
    triton  `absorbed_attention_triton`, split-K flash-decoding over the latent; default on CUDA when triton imports.
`INTERNVIDEO3_LATENT_BACKEND=torch|triton` (or the `backend=` argument) forces one. The Triton kernel runs on CPU
tensors only under `TRITON_INTERPRET=1` (set before this module is imported: `triton.jit` reads it at decoration).
"""

from __future__ import annotations

import functools
import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # optional: without triton every call takes the torch path
    triton = None

BACKEND_ENV = "INTERNVIDEO3_LATENT_BACKEND"
LOG2E = 1.4426950408889634


def absorbed_attention_torch(
    q_lat: torch.Tensor,
    q_pe: torch.Tensor,
    ckv: torch.Tensor,
    k_pe: torch.Tensor,
    softmax_scale: float,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Absorbed queries attending over the latent cache: the torch path and reference (SPEC §4, "Decode with weight
    absorption").

    Args:
        q_lat: [B, H, S, r] queries already multiplied by W_UK (`q_nope @ W_UK`).
        q_pe: [B, H, S, d_r] rotated RoPE queries.
        ckv: [B, T, r] cached latents c.
        k_pe: [B, T, d_r] cached shared RoPE keys (after rotation).
        softmax_scale: multiplies the logits (M²LA: (qk_nope_head_dim + qk_rope_head_dim) ** -0.5).
        attn_mask: None, bool [B|1, 1|H, S|1, T] (True = attend) or an additive float mask of that shape.

    Returns:
        o_lat: [B, H, S, r] in q_lat's dtype; multiply by W_UV to get per-head values. A query whose keys are all
        masked gives NaN (as softmax over nothing).

    Scores, softmax and the probability-weighted sum of latents are computed in fp32 from 16-bit inputs (fp64 stays
    fp64): scores rounded to bf16 (logits of a few units lose ~1e-2) doubled the error of expanded SDPA in bf16.
    """
    B, H, S, r = q_lat.shape
    dtype = q_lat.dtype
    compute = torch.promote_types(ckv.dtype, torch.float32)
    q_lat, q_pe, ckv, k_pe = (x.to(compute) for x in (q_lat, q_pe, ckv, k_pe))
    # Heads fold into the query axis so the single latent "key head" is read once per batch row (MQA trick); the
    # rope scores seed baddbmm so both parts and the scale cost one pass over the [B, H·S, T] scores.
    rope = torch.bmm(q_pe.reshape(B, H * S, -1), k_pe.transpose(1, 2))  # [B, H·S, T]
    scores = torch.baddbmm(  # (q_pe·k_peᵀ + q_lat·cᵀ)·scale, [B, H·S, T]
        rope, q_lat.reshape(B, H * S, r), ckv.transpose(1, 2), beta=softmax_scale, alpha=softmax_scale
    )
    scores = scores.view(B, H, S, -1)  # [B, H, S, T]
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs.view(B, H * S, -1), ckv).view(B, H, S, r).to(dtype)


if triton is not None:

    @triton.jit
    def _dot(a, b, EXACT_F32: tl.constexpr):
        """a @ b with fp32 accumulation. EXACT_F32: full-precision fp32 dots (tl.dot would round fp32 inputs to tf32),
        also used for bf16 under the interpreter, which multiplies bf16 bit patterns (triton-lang/triton#11584)."""
        if EXACT_F32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b)

    @triton.jit
    def _latent_decode_split_kernel(
        Q, QPE, C, KPE, MASK, ACC, M, L,
        rows, S, T, split_len, scale_log2,
        sq_b, sq_h, sq_s, sq_c,
        sp_b, sp_h, sp_s, sp_c,
        sc_b, sc_t, sc_c,
        sk_b, sk_t, sk_c,
        sm_b, sm_h, sm_s, sm_t,
        sa_b, sa_r, sa_k,
        sl_b, sl_r,
        R_LAT: tl.constexpr, D_R: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_DR: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
        MASK_KIND: tl.constexpr, EXACT_F32: tl.constexpr,
    ):  # fmt: skip
        """One (batch row, block of BLOCK_H query rows, split of the cache) program: online softmax over its keys.

        Query rows are the H·S pairs (h, s) (all read the same latent keys: MQA). Writes the unnormalised output
        ACC [B, H·S, splits, r] (fp32), the running max M (log2 domain) and the sum L [B, H·S, splits].
        MASK_KIND: 0 none, 1 bool (uint8 view, nonzero = attend), 2 additive float.
        """
        b = tl.program_id(0).to(tl.int64)  # int64 offsets: B·T·r passes 2**31 at long contexts
        row = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
        split = tl.program_id(2)
        row_ok = row < rows
        h = (row // S).to(tl.int64)
        s = (row % S).to(tl.int64)
        offs_c = tl.arange(0, BLOCK_R)  # latent width padded to a power of two, masked (896 -> 1024)
        offs_p = tl.arange(0, BLOCK_DR)
        c_ok = offs_c < R_LAT
        p_ok = offs_p < D_R

        q = tl.load(
            Q + b * sq_b + h[:, None] * sq_h + s[:, None] * sq_s + offs_c[None, :] * sq_c,
            mask=row_ok[:, None] & c_ok[None, :], other=0.0,
        )  # [BLOCK_H, BLOCK_R]
        q_pe = tl.load(
            QPE + b * sp_b + h[:, None] * sp_h + s[:, None] * sp_s + offs_p[None, :] * sp_c,
            mask=row_ok[:, None] & p_ok[None, :], other=0.0,
        )  # [BLOCK_H, BLOCK_DR]

        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
        start = split * split_len
        end = tl.minimum(start + split_len, T)
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_ok = offs_n < end
            c = tl.load(
                C + b * sc_b + offs_n[:, None] * sc_t + offs_c[None, :] * sc_c,
                mask=n_ok[:, None] & c_ok[None, :], other=0.0,
            )  # [BLOCK_N, BLOCK_R]: the only large read; it serves as key and as value
            k_pe = tl.load(
                KPE + b * sk_b + offs_n[:, None] * sk_t + offs_p[None, :] * sk_c,
                mask=n_ok[:, None] & p_ok[None, :], other=0.0,
            )  # [BLOCK_N, BLOCK_DR]
            qk = _dot(q, tl.trans(c), EXACT_F32) + _dot(q_pe, tl.trans(k_pe), EXACT_F32)
            qk = qk * scale_log2  # [BLOCK_H, BLOCK_N], log2 domain so exp2 replaces exp
            visible = row_ok[:, None] & n_ok[None, :]
            if MASK_KIND != 0:
                mask_ptr = MASK + b * sm_b + h[:, None] * sm_h + s[:, None] * sm_s + offs_n[None, :] * sm_t
                if MASK_KIND == 1:
                    visible = visible & (tl.load(mask_ptr, mask=visible, other=0) != 0)
                else:
                    qk += tl.load(mask_ptr, mask=visible, other=0.0).to(tl.float32) * 1.4426950408889634  # LOG2E
            qk = tl.where(visible, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: no NaN from -inf - -inf
            p = tl.math.exp2(qk - m_ref[:, None])
            alpha = tl.math.exp2(m_i - m_ref)
            l_i = l_i * alpha + tl.sum(p, 1)
            # p is rounded to the cache dtype only where a 16-bit tensor-core dot needs it (as flash attention does)
            acc = acc * alpha[:, None] + _dot(p if EXACT_F32 else p.to(c.dtype), c, EXACT_F32)
            m_i = m_new

        tl.store(
            ACC + b * sa_b + row[:, None] * sa_r + split * sa_k + offs_c[None, :],
            acc, mask=row_ok[:, None] & c_ok[None, :],
        )
        tl.store(M + b * sl_b + row * sl_r + split, m_i, mask=row_ok)
        tl.store(L + b * sl_b + row * sl_r + split, l_i, mask=row_ok)

    @triton.jit
    def _latent_decode_combine_kernel(
        ACC, M, L, OUT,
        S, splits,
        sa_b, sa_r, sa_k,
        sl_b, sl_r,
        so_b, so_h, so_s, so_c,
        R_LAT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """Merge the splits of one (batch row, query row): out = Σ_k 2^(m_k - m)·acc_k / Σ_k 2^(m_k - m)·l_k."""
        b = tl.program_id(0).to(tl.int64)
        row = tl.program_id(1).to(tl.int64)
        offs_k = tl.arange(0, BLOCK_K)
        k_ok = offs_k < splits
        m = tl.load(M + b * sl_b + row * sl_r + offs_k, mask=k_ok, other=float("-inf"))
        l = tl.load(L + b * sl_b + row * sl_r + offs_k, mask=k_ok, other=0.0)
        m_max = tl.max(m, 0)
        m_ref = tl.where(m_max == float("-inf"), 0.0, m_max)
        denom = tl.sum(tl.math.exp2(m - m_ref) * l, 0)  # 0 when every key is masked: 0/0 = NaN, as the torch path
        offs_c = tl.arange(0, BLOCK_R)
        c_ok = offs_c < R_LAT
        out = tl.zeros([BLOCK_R], tl.float32)
        for k in range(0, splits):
            w_k = tl.math.exp2(tl.load(M + b * sl_b + row * sl_r + k) - m_ref)
            out += w_k * tl.load(ACC + b * sa_b + row * sa_r + k * sa_k + offs_c, mask=c_ok, other=0.0)
        out = out / denom
        h, s = row // S, row % S
        tl.store(OUT + b * so_b + h * so_h + s * so_s + offs_c * so_c, out.to(OUT.dtype.element_ty), mask=c_ok)


# Whether the kernels above were decorated under TRITON_INTERPRET=1 (read by `triton.jit` at import) and run on CPU.
INTERPRETED = triton is not None and type(_latent_decode_split_kernel).__name__ == "InterpretedFunction"


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    """SM count of a CUDA device, looked up once: this runs in every layer of every decode step."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def _default_num_splits(T: int, programs: int, device: torch.device, block_n: int) -> int:
    """Splits of the cache so that (programs × splits) fills the GPU about twice, each split ≥ 8 key blocks."""
    if device.type == "cuda":
        target = 2 * _multiprocessors(device)
    else:  # interpreter: every program is Python work, so few
        target = programs * 4
    return max(1, min(math.ceil(target / programs), math.ceil(T / (8 * block_n)), 256))


def on_input_device(launch):
    """Decorator: run a Triton launch `launch(q_lat, ...)` with q_lat's CUDA device current. Triton launches on the
    current device, not the tensors' one, so a layer on cuda:1 under a `device_map` would otherwise fault."""

    @functools.wraps(launch)
    def wrapped(q_lat: torch.Tensor, *args, **kwargs):
        if not q_lat.is_cuda:
            return launch(q_lat, *args, **kwargs)
        with torch.cuda.device(q_lat.device):
            return launch(q_lat, *args, **kwargs)

    return wrapped


@on_input_device
def absorbed_attention_triton(
    q_lat: torch.Tensor,
    q_pe: torch.Tensor,
    ckv: torch.Tensor,
    k_pe: torch.Tensor,
    softmax_scale: float,
    attn_mask: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """The absorbed attention as a split-K Triton kernel (flash decoding over the latent cache; SPEC §4, §10).

    Same contract as `absorbed_attention_torch` (shapes, masks, dtype of the result). Each program holds BLOCK_H = 16
    query rows (the H·S (head, query) pairs; MQA: they share the latent keys) against one split of the T cached
    tokens, reads the latent tile once for the scores and for the values, and accumulates in fp32 (bf16/fp16 inputs
    go through tensor-core dots; fp32 inputs use exact fp32 dots). A second kernel merges the splits. r and d_r are
    compile-time constants padded to powers of two with masks, so 896 + 128 and 32 + 16 both work.

    Args:
        num_splits: splits of the cache (default: enough programs to fill the GPU twice, each ≥ 8 key blocks).
        block_n: cached tokens per inner step (default 16 when r > 256, else 32).

    Raises:
        RuntimeError: triton is not installed, or the tensors are on CPU without `TRITON_INTERPRET=1`.
        ValueError: a mask whose last dimension is not T.
    """
    if triton is None:
        raise RuntimeError("absorbed_attention_triton needs the `triton` package")
    if not q_lat.is_cuda and not INTERPRETED:
        raise RuntimeError("the Triton latent kernel runs on CUDA tensors, or on CPU under TRITON_INTERPRET=1")
    B, H, S, r = q_lat.shape
    T, d_r = ckv.shape[1], k_pe.shape[-1]
    out_dtype = q_lat.dtype
    q_lat, q_pe, k_pe = q_lat.to(ckv.dtype), q_pe.to(ckv.dtype), k_pe.to(ckv.dtype)  # tl.dot needs one dtype
    rows = H * S
    block_r = max(16, triton.next_power_of_2(r))
    block_n = block_n or (16 if block_r > 256 else 32)
    block_h = 16  # tensor-core dots need ≥ 16 rows; fewer rows are masked
    row_blocks = triton.cdiv(rows, block_h)
    splits = num_splits or _default_num_splits(T, B * row_blocks, q_lat.device, block_n)
    split_len = triton.cdiv(triton.cdiv(max(T, 1), splits), block_n) * block_n
    splits = triton.cdiv(max(T, 1), split_len)  # no empty split

    mask_kind, mask, mask_strides = 0, ckv, (0, 0, 0, 0)
    if attn_mask is not None:
        if attn_mask.shape[-1] != T:
            raise ValueError(f"attn_mask has {attn_mask.shape[-1]} key columns, the cache holds {T}")
        mask = attn_mask.expand(B, H, S, T)  # broadcast dims get stride 0: no copy
        mask_kind = 1 if mask.dtype == torch.bool else 2
        if mask_kind == 1:
            mask = mask.view(torch.uint8)
        mask_strides = mask.stride()

    acc = torch.empty(B, rows, splits, r, device=q_lat.device, dtype=torch.float32)
    m = torch.empty(B, rows, splits, device=q_lat.device, dtype=torch.float32)
    l = torch.empty_like(m)
    wide = block_r >= 512
    exact_f32 = ckv.dtype == torch.float32 or (INTERPRETED and ckv.dtype == torch.bfloat16)
    _latent_decode_split_kernel[(B, row_blocks, splits)](
        q_lat, q_pe, ckv, k_pe, mask, acc, m, l,
        rows, S, T, split_len, softmax_scale * LOG2E,
        *q_lat.stride(), *q_pe.stride(), *ckv.stride(), *k_pe.stride(), *mask_strides,
        acc.stride(0), acc.stride(1), acc.stride(2), m.stride(0), m.stride(1),
        R_LAT=r, D_R=d_r, BLOCK_R=block_r, BLOCK_DR=max(16, triton.next_power_of_2(d_r)), BLOCK_H=block_h,
        BLOCK_N=block_n, MASK_KIND=mask_kind, EXACT_F32=exact_f32,
        num_warps=8 if wide else 4, num_stages=2,
    )  # fmt: skip
    out = torch.empty(B, H, S, r, device=q_lat.device, dtype=out_dtype)
    _latent_decode_combine_kernel[(B, rows)](
        acc, m, l, out, S, splits,
        acc.stride(0), acc.stride(1), acc.stride(2), m.stride(0), m.stride(1), *out.stride(),
        R_LAT=r, BLOCK_R=block_r, BLOCK_K=max(2, triton.next_power_of_2(splits)), num_warps=4 if wide else 2,
    )  # fmt: skip
    return out


def select_backend(q_lat: torch.Tensor, backend: str | None = None) -> str:
    """"torch" or "triton": `backend`, else $INTERNVIDEO3_LATENT_BACKEND, else triton for CUDA tensors when it imports.

    The automatic choice is torch inside `torch.compile` (inductor generates its own fused kernels from it), when
    autograd needs the result (the kernel has no backward) and for dtypes other than fp16/bf16/fp32.

    Raises:
        ValueError: an unknown backend name.
    """
    choice = (backend or os.environ.get(BACKEND_ENV, "") or "auto").lower()
    if choice not in ("auto", "torch", "triton"):
        raise ValueError(f"unknown latent attention backend {choice!r}: use 'torch', 'triton' or 'auto'")
    if choice == "auto":
        use_triton = (
            triton is not None
            and q_lat.is_cuda
            and q_lat.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and not (torch.is_grad_enabled() and q_lat.requires_grad)
            and not torch.compiler.is_compiling()
        )
        choice = "triton" if use_triton else "torch"
    return choice


def latent_attention_decode(
    q_lat: torch.Tensor,
    q_pe: torch.Tensor,
    ckv: torch.Tensor,
    k_pe: torch.Tensor,
    softmax_scale: float,
    attn_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Dispatch the absorbed attention (same contract as `absorbed_attention_torch`) to `select_backend`'s choice.

    Raises:
        RuntimeError: backend "triton" forced without triton, or on CPU tensors without `TRITON_INTERPRET=1`.
    """
    if select_backend(q_lat, backend) == "triton":
        return absorbed_attention_triton(q_lat, q_pe, ckv, k_pe, softmax_scale, attn_mask)
    return absorbed_attention_torch(q_lat, q_pe, ckv, k_pe, softmax_scale, attn_mask)
