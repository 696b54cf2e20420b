"""One linear at one query's size (M = 17 tokens) and at a batch's (M = 1024): oneDNN's u8 x s8
qlinear_pointwise (Ember's AVX2 int8 kernel, eager) against MKL's float32 mm, 1 and 2 threads."""
import time

import torch


def bench(f, n=2000):
    for _ in range(50):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


def compare(m: int, k: int, n: int) -> None:
    w = torch.randint(-127, 127, (n, k), dtype=torch.int8)
    packed = torch.ops.onednn.qlinear_prepack(w, None)
    ws, wz = torch.rand(n), torch.zeros(n, dtype=torch.int32)
    x = torch.randint(0, 127, (m, k), dtype=torch.uint8)
    xf, wf = torch.randn(m, k), torch.randn(k, n)

    def int8() -> None:
        torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, packed, ws, wz, None, 1.0, 0, torch.float32, "none", [], "")

    def float32() -> None:
        torch.mm(xf, wf)

    for threads in (1, 2):
        torch.set_num_threads(threads)
        reps = 300 if m > 100 else 2000
        print(f"M={m} K={k} N={n} threads={threads}: onednn u8s8 {bench(int8, reps):.1f} us, "
              f"mkl fp32 {bench(float32, reps):.1f} us")


for shape in [(17, 384, 1152), (17, 384, 384), (17, 384, 1536), (17, 1536, 384), (1024, 384, 1536)]:
    compare(*shape)
