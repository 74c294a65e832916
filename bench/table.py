#!/usr/bin/env python3
"""Runs ours and the peer side by side per case and prints a Markdown table (bench/run drives this).

Like for like: ours in float32 against the peer in float32, ours --bf16 against the peer under
--autocast-bf16 (torch.autocast on the CPU), one row per pair, each with our step's achieved GFLOP/s
and MFU (that rate over the measured peak of our product kernel in the same precision,
`deltatune bench --kernel-peak`), the peer's MFU (the same useful work over its step time, over the
peak of its own product kernel, bench/peer_kernel_peak.py) and the ceiling: the speed ratio ours would
reach if our step were nothing but its products at our kernel's peak. --quantize adds a row per format: ours with that quantised frozen base
against the peer in float32 (issue 19's comparison: what a QLoRA user saves against plain PyTorch), no
MFU (the product kernel's peak is measured for float and bfloat16 only)."""
import argparse, json, os, platform, subprocess, sys

QUICK = [  # (model, method, lora_all, batch, seq)
    ("bert-mini", "lora", False, 8, 128),
    ("gpt2-mini", "lora", False, 8, 128),
    ("llama-mini", "lora", True, 8, 128),
    ("bert-mini", "full", False, 8, 128),
    ("bert-mini", "frozen", False, 8, 128),
]
FULL = [
    ("bert-base", "lora", False, 8, 128),
    ("gpt2-124m", "lora", False, 4, 256),
    ("llama-160m", "lora", True, 4, 256),
    ("bert-base", "full", False, 8, 128),
    ("bert-base", "frozen", False, 8, 128),
]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(f"bench: {' '.join(cmd)} failed:\n{out.stderr}\n")
        return None
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


# The precision pairs compared like for like: (name, our flag, the peer's flag, the column's label).
PAIRS = {
    "float32": ([], [], "f32 vs f32"),
    "bf16": (["--bf16"], ["--autocast-bf16"], "bf16 vs autocast-bf16"),
}


def kernel_peaks(a, dtypes, env):
    """The measured peak of each side's product kernel per precision (the MFU denominators): ours
    (`deltatune bench --kernel-peak`) and the peer's (bench/peer_kernel_peak.py), the same product."""
    peer_peak = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_kernel_peak.py")
    peaks, peer_peaks = {}, {}
    for dt in dtypes:
        peaks[dt] = run([a.ours, "bench", "--kernel-peak", "--threads", str(a.threads)] + PAIRS[dt][0], env)
        peer_peaks[dt] = run(["/usr/bin/python3", peer_peak, "--threads", str(a.threads)] + PAIRS[dt][1], env)
    return peaks, peer_peaks


def best(runs):
    runs = [r for r in runs if r]
    return max(runs, key=lambda r: r["tokens_per_s"]) if runs else None


def ratio(x, y):
    return f"{x / y:.2f}x" if x is not None and y else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--peer", required=True)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the mini shapes (default)")
    mode.add_argument("--full", action="store_true", help="the base shapes of issue 7")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="run only cases whose name contains this")
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate ours/peer this many times per case and keep each side's best run "
                         "(other load on the machine only ever slows a run down)")
    ap.add_argument("--quantize", default="",
                    help="comma-separated formats (nf4,int8,...): a row each, ours --quantize FORMAT against "
                         "the peer in float32; +ckpt (nf4+ckpt) adds --gradient-checkpointing, +bf16 (nf4+bf16+ckpt) "
                         "--bf16: QLoRA's recipe, a 4-bit base with bfloat16 compute")
    ap.add_argument("--precision", choices=["float32", "bf16", "both"], default="both",
                    help="float32: ours against the peer in float32; bf16: ours --bf16 against the peer "
                         "--autocast-bf16; both (default): each pair side by side")
    a = ap.parse_args()
    dtypes = ["float32", "bf16"] if a.precision == "both" else [a.precision]
    for q in filter(None, a.quantize.split(",")):
        fmt, *extras = q.split("+")
        unknown = [e for e in extras if e not in ("ckpt", "bf16")]
        if unknown:
            sys.exit(f"bench: --quantize {q}: unknown '+{unknown[0]}' (FORMAT[+bf16][+ckpt])")
        PAIRS[q] = (["--quantize", fmt] + (["--bf16"] if "bf16" in extras else []) +
                    (["--gradient-checkpointing"] if "ckpt" in extras else []), [], f"{q} vs f32")
        dtypes.append(q)
    cases = FULL if a.full else QUICK
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; threads {a.threads}, steps {a.steps}, warmup {a.warmup}, "
          f"best of {max(1, a.repeat)}; OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE', '(auto)')}, "
          f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    peaks, peer_peaks = kernel_peaks(a, [dt for dt in dtypes if dt in ("float32", "bf16")], env)
    for dt in peaks:
        k, kp = peaks[dt], peer_peaks[dt]
        print(f"kernel peak {dt}: ours " +
              (f"{k['peak_gflops']:.1f} GFLOP/s ({k['kernel']}, {k['m']}x{k['n']}x{k['k']}; "
               f"{k['instruction']} from registers alone: {k['register_peak_gflops']:.1f})" if k else "-") +
              "; peer " + (f"{kp['peak_gflops']:.1f} GFLOP/s ({kp['kernel']})" if kp else "-"))
    print()
    head = ["case", "precision (ours vs peer)", "ours tok/s", "peer tok/s", "speed", "ours MiB", "peer MiB",
            "memory", "ours GFLOP/s", "MFU", "peer MFU", "ceiling"]
    print("| " + " | ".join(head) + " |")
    print("|---|---" + "|---:" * (len(head) - 2) + "|")
    for model, method, lora_all, b, t in cases:
        name = f"{model} {method}{'-all' if lora_all else ''} b{b} s{t}"
        if a.only and a.only not in name:
            continue
        args = ["--model", model, "--method", method, "--batch", str(b), "--seq", str(t), "--threads", str(a.threads),
                "--steps", str(a.steps), "--warmup", str(a.warmup)] + (["--lora-all"] if lora_all else [])
        ours = {dt: [] for dt in dtypes}
        peer = {dt: [] for dt in dtypes}
        for _ in range(max(1, a.repeat)):  # alternated, same threads and environment for both sides
            for dt in dtypes:
                ours[dt].append(run([a.ours, "bench"] + args + PAIRS[dt][0], env))
                # A quantised row's peer is the float32 run: taken once when that pair runs anyway.
                if dt in peaks or "float32" not in dtypes:
                    peer[dt].append(run(["/usr/bin/python3", a.peer] + args + PAIRS[dt][1], env))
        for dt in dtypes:
            o, k = best(ours[dt]), peaks.get(dt)
            p = best(peer[dt] if peer[dt] else peer["float32"])
            kp = peer_peaks.get(dt)
            mfu = f"{100 * o['gflops'] / k['peak_gflops']:.0f}%" if o and k and k["peak_gflops"] else "-"
            # The peer's step does the same useful work (the same model and step): its rate over its kernel's peak.
            peer_gflops = o["gflop_per_step"] / (p["step_ms"] / 1000.0) if o and p and p.get("step_ms") else None
            peer_mfu = f"{100 * peer_gflops / kp['peak_gflops']:.0f}%" if peer_gflops and kp and kp["peak_gflops"] else "-"
            # The speed ratio ours would reach if our step were its products alone, at our kernel's peak:
            # above it only a faster kernel (or less work) can go.
            ceiling = (ratio(p["step_ms"] / 1000.0, o["gflop_per_step"] / k["peak_gflops"])
                       if o and p and p.get("step_ms") and k and k["peak_gflops"] else "-")
            row = [name, PAIRS[dt][2],
                   f"{o['tokens_per_s']:.0f}" if o else "-", f"{p['tokens_per_s']:.0f}" if p else "-",
                   ratio(o and o["tokens_per_s"], p and p["tokens_per_s"]),
                   f"{o['peak_rss_mib']:.0f}" if o else "-", f"{p['peak_rss_mib']:.0f}" if p else "-",
                   ratio(o and o["peak_rss_mib"], p and p["peak_rss_mib"]),
                   f"{o['gflops']:.1f}" if o else "-", mfu, peer_mfu, ceiling]
            print("| " + " | ".join(row) + " |", flush=True)
            # A bf16 run that fell back to float32 (no AVX-512 BF16 here) says so.
            if dt == "bf16" and o and o.get("precision") != "bf16":
                print(f"(ours {dt}: this CPU ran it in {o['precision']})", flush=True)


if __name__ == "__main__":
    main()
