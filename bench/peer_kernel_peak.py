#!/usr/bin/env python3
"""The peer's product kernel timed alone, the counterpart of `deltatune bench --kernel-peak`.

The same product (1024 x 768 activations times a [3072, 768] weight, bert-base's FFN product on 8 x 128
tokens) through what the peer's linear layers call: `F.linear` in float32, and `F.linear` under
`torch.autocast("cpu", dtype=torch.bfloat16)` with --autocast-bf16 (oneDNN's bfloat16 product, the weight
cast per call as autocast does). Best of --steps calls after --warmup. Prints one JSON line:
  {"engine": "pytorch", "kernel": ..., "precision": ..., "m": 1024, "n": 3072, "k": 768, "threads": N,
   "peak_gflops": ...}
bench/table.py sets it beside ours, so the table says how fast each side's products can run at best."""
import argparse, json, time

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed calls (the best is kept)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--autocast-bf16", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m, n, k = 1024, 3072, 768
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g) * 0.1
    w = torch.randn(n, k, generator=g) * 0.1

    def product():
        if a.autocast_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return F.linear(x, w)
        return F.linear(x, w)

    with torch.no_grad():
        for _ in range(a.warmup):
            product()
        best = None
        for _ in range(max(1, a.steps)):
            t0 = time.perf_counter()
            product()
            dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
    gflops = 2.0 * m * n * k / best * 1e-9
    kernel = "torch F.linear under autocast bf16 (oneDNN)" if a.autocast_bf16 else "torch F.linear float32"
    print(json.dumps({"engine": "pytorch", "kernel": kernel, "precision": "bf16" if a.autocast_bf16 else "float32",
                      "m": m, "n": n, "k": k, "threads": a.threads, "peak_gflops": round(gflops, 1)}))


if __name__ == "__main__":
    main()
