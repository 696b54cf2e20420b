"""Attention at a MiniLM passage batch's shape (4 x 12 heads x 256 x 32), compiled by inductor:
float32 SDPA (what Ember runs) against bf16 matmuls with a float32 softmax, on 2 threads."""
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(2)
B, H, S, D = 4, 12, 256, 32
g = torch.Generator().manual_seed(0)
q, k, v = [torch.randn(B, H, S, D, generator=g) for _ in range(3)]
mask = torch.zeros(B, 1, 1, S)
mask[1, ..., 200:] = float("-inf")


def sdpa_fp32(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def bf16_matmuls(q, k, v, mask):
    s = torch.matmul(q.bfloat16(), k.bfloat16().transpose(-1, -2)).float() * D ** -0.5 + mask
    p = torch.softmax(s, -1)
    return torch.matmul(p.bfloat16(), v.bfloat16()).float()


def sdpa_bf16(q, k, v, mask):
    return F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask.bfloat16()).float()


def timeit(fn, n=40):
    with torch.inference_mode():
        for _ in range(5):
            fn(q, k, v, mask)
        t = time.perf_counter()
        for _ in range(n):
            fn(q, k, v, mask)
    return (time.perf_counter() - t) / n * 1e3

with torch.inference_mode():
    ref = sdpa_fp32(q, k, v, mask)
for name, fn in [("sdpa fp32", sdpa_fp32), ("sdpa bf16", sdpa_bf16), ("bf16 matmuls, fp32 softmax", bf16_matmuls)]:
    c = torch.compile(fn, dynamic=False)
    with torch.inference_mode():
        out = c(q, k, v, mask)
    err = (out - ref).abs().max().item()
    cos = F.cosine_similarity(out.flatten(2), ref.flatten(2), dim=-1).min().item()
    print(f"{name}: {timeit(c):.2f} ms compiled ({timeit(fn):.2f} eager), max abs err {err:.2e}, min cos {cos:.6f}")
