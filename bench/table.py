#!/usr/bin/env python3
"""Runs ours and the peer side by side per case and prints a Markdown table (bench/run drives this)."""
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
    ap.add_argument("--precision", choices=["float32", "bf16", "both"], default="both",
                    help="ours in float32 (exact, as the peer), with --bf16 (bfloat16 products on AVX-512 BF16, "
                         "float32 where the CPU lacks it), or both side by side (default)")
    a = ap.parse_args()
    dtypes = ["float32", "bf16"] if a.precision == "both" else [a.precision]
    cases = FULL if a.full else QUICK
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; threads {a.threads}, steps {a.steps}, warmup {a.warmup}, "
          f"best of {max(1, a.repeat)}; OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE', '(auto)')}, "
          f"OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}")
    print()
    def label(dt):
        return "ours" if len(dtypes) == 1 and dt == "float32" else f"ours {'bf16' if dt == 'bf16' else 'f32'}"
    head = ["case", "peer tok/s"]
    for dt in dtypes:
        head += [f"{label(dt)} tok/s", "speed ratio"]
    head.append("peer MiB")
    for dt in dtypes:
        head += [f"{label(dt)} MiB", "memory ratio"]
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    for model, method, lora_all, b, t in cases:
        name = f"{model} {method}{'-all' if lora_all else ''} b{b} s{t}"
        if a.only and a.only not in name:
            continue
        args = ["--model", model, "--method", method, "--batch", str(b), "--seq", str(t), "--threads", str(a.threads),
                "--steps", str(a.steps), "--warmup", str(a.warmup)] + (["--lora-all"] if lora_all else [])
        ours = {dt: None for dt in dtypes}
        peer = None
        for _ in range(max(1, a.repeat)):
            for dt in dtypes:
                o = run([a.ours, "bench"] + args + (["--bf16"] if dt == "bf16" else []), env)
                if o and (not ours[dt] or o["tokens_per_s"] > ours[dt]["tokens_per_s"]): ours[dt] = o
            p = run(["/usr/bin/python3", a.peer] + args, env)
            if p and (not peer or p["tokens_per_s"] > peer["tokens_per_s"]): peer = p
        row = [name, f"{peer['tokens_per_s']:.0f}" if peer else "-"]
        for dt in dtypes:
            o = ours[dt]
            row += [f"{o['tokens_per_s']:.0f}" if o else "-",
                    f"{o['tokens_per_s'] / peer['tokens_per_s']:.2f}x" if o and peer else "-"]
        row.append(f"{peer['peak_rss_mib']:.0f}" if peer else "-")
        for dt in dtypes:
            o = ours[dt]
            row += [f"{o['peak_rss_mib']:.0f}" if o else "-",
                    f"{o['peak_rss_mib'] / peer['peak_rss_mib']:.2f}x" if o and peer else "-"]
        print("| " + " | ".join(row) + " |", flush=True)
        # A bf16 run that fell back to float32 (no AVX-512 BF16 here) says so.
        for dt in dtypes:
            if ours[dt] and ours[dt].get("precision", dt) != dt:
                print(f"(ours {dt}: this CPU ran it in {ours[dt]['precision']})", flush=True)

if __name__ == "__main__":
    main()
