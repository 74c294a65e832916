#!/usr/bin/python3
"""Writes tests/data/optimizer/*.json: reference runs of torch.optim.SGD / AdamW (single-tensor
path), torch.nn.utils.clip_grad_norm_, and transformers' learning-rate schedules driven through
torch's LambdaLR, for tests/test_optimizer.cc.

Run with Debian's torch (python3-torch 1.13): /usr/bin/python3 scripts/make_optimizer_fixtures.py
Gradients are drawn from a seeded generator and stored, so the C++ test replays them exactly.
"""
import json
import math
import os
import sys

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "optimizer")

# The parameters every case optimizes: a matrix long enough for torch's vectorized kernels and
# vectors short enough for its scalar tails.
SHAPES = {"layer.weight": [4, 9], "layer.bias": [5], "norm.weight": [7]}


# transformers/optimization.py lr lambdas (transformers is not a dependency here), verbatim formulas.
def constant(_):
    return 1.0


def constant_with_warmup(warmup):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1.0, warmup))
        return 1.0
    return f


def linear(warmup, total):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    return f


def cosine(warmup, total, num_cycles=0.5):
    def f(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))
    return f


SCHEDULES = {"constant": lambda w, t: constant, "constant_with_warmup": lambda w, t: constant_with_warmup(w),
             "linear": linear, "cosine": cosine}


def flat(t):
    return t.detach().reshape(-1).tolist()


def run_case(name, optimizer, options, groups, steps, missing=(), schedule=None, grad_scale=None, seed=0):
    """groups: [{"params": [names], optional "lr"/"weight_decay"}]; missing: (step, param) without grad."""
    gen = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(SHAPES[n], generator=gen).requires_grad_() for g in groups for n in g["params"]}
    init = {n: flat(p) for n, p in params.items()}
    torch_groups = [dict({k: v for k, v in g.items() if k != "params"}, params=[params[n] for n in g["params"]])
                    for g in groups]
    if optimizer == "sgd":
        opt = torch.optim.SGD(torch_groups, foreach=False, **options)
    else:
        opt = torch.optim.AdamW(torch_groups, foreach=False, betas=(options["beta1"], options["beta2"]),
                                **{k: v for k, v in options.items() if k not in ("beta1", "beta2")})
    sched = None
    if schedule:
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, SCHEDULES[schedule["name"]](schedule["num_warmup_steps"], schedule["num_training_steps"]))

    records = []
    for step in range(steps):
        grads = {}
        for n, p in params.items():
            scale = grad_scale(step) if grad_scale else 1.0
            g = torch.randn(p.shape, generator=gen) * scale
            if (step, n) in missing:
                p.grad = None
                grads[n] = None
            else:
                p.grad = g
                grads[n] = flat(g)
        lrs = [group["lr"] for group in opt.param_groups]
        opt.step()
        if sched:
            sched.step()
        records.append({"grads": grads, "lrs": lrs, "params": {n: flat(p) for n, p in params.items()}})

    # State under the C++ names: "<kind>.<param>" and "step.<param>".
    kinds = {"momentum_buffer": "momentum", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq",
             "max_exp_avg_sq": "max_exp_avg_sq"}
    state = {}
    for n, p in params.items():
        for key, value in opt.state.get(p, {}).items():
            if key == "step":
                state["step." + n] = int(value.item())
            elif value is not None:
                state[kinds[key] + "." + n] = flat(value)

    case = {"name": name, "optimizer": optimizer, "options": options, "groups": groups,
            "params": [{"name": n, "shape": SHAPES[n], "init": init[n]} for n in params],
            "steps": records, "final_state": state, "torch_version": torch.__version__}
    if schedule:
        case["schedule"] = schedule
    write(name, case)


def clip_case(name, max_norm, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"a": [4, 9], "b": [5], "c": [3], "big": [1000]}
    params = {n: torch.zeros(s, requires_grad=True) for n, s in shapes.items()}
    grads = {}
    for n, p in params.items():
        if n == "c":
            grads[n] = None  # no gradient: skipped
            continue
        p.grad = torch.randn(p.shape, generator=gen) * 0.1
        grads[n] = flat(p.grad)
    total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
    write(name, {"max_norm": max_norm, "shapes": shapes, "grads": grads, "total_norm": total.item(),
                 "clipped": {n: (flat(p.grad) if p.grad is not None else None) for n, p in params.items()},
                 "torch_version": torch.__version__})


def schedule_cases():
    cases = []
    for sched, warmup, total in [("constant", 0, 10), ("constant_with_warmup", 4, 10), ("linear", 3, 10),
                                 ("linear", 0, 5), ("linear", 5, 5), ("cosine", 3, 10), ("cosine", 0, 7),
                                 ("cosine", 2, 2), ("cosine", 0, 0)]:
        # base lr 1.0, so the group's lr is the multiplier itself.
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, SCHEDULES[sched](warmup, total))
        values = []
        for _ in range(total + 3):
            values.append(opt.param_groups[0]["lr"])
            opt.step()
            lr_sched.step()
        cases.append({"name": sched, "num_warmup_steps": warmup, "num_training_steps": total,
                      "multipliers": values})
    write("schedules", {"cases": cases, "torch_version": torch.__version__})


def write(name, obj):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(obj, f, indent=None, separators=(",", ":"))
        f.write("\n")


def main():
    torch.set_num_threads(1)
    all_params = ["layer.weight", "layer.bias", "norm.weight"]
    run_case("sgd_plain", "sgd", {"lr": 0.1}, [{"params": all_params}], steps=5,
             missing={(1, "layer.bias")}, seed=1)
    run_case("sgd_momentum", "sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01},
             [{"params": all_params}], steps=6, missing={(0, "norm.weight"), (3, "layer.bias")}, seed=2)
    run_case("sgd_nesterov", "sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.001},
             [{"params": ["layer.weight"]}, {"params": ["layer.bias", "norm.weight"], "lr": 0.02,
                                             "weight_decay": 0.0}], steps=6, seed=3)
    run_case("adamw", "adamw", {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
             [{"params": ["layer.weight"]}, {"params": ["layer.bias", "norm.weight"], "weight_decay": 0.0}],
             steps=6, missing={(1, "layer.bias"), (2, "layer.bias"), (4, "norm.weight")}, seed=4)
    # Gradients shrink then grow, so AMSGrad's running max of the second moment matters.
    run_case("adamw_amsgrad", "adamw",
             {"lr": 3e-3, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1, "amsgrad": True},
             [{"params": all_params}], steps=7, grad_scale=lambda s: [3.0, 1.0, 0.1, 0.05, 2.0, 0.01, 5.0][s],
             missing={(2, "norm.weight")}, seed=5)
    run_case("adamw_linear_schedule", "adamw", {"lr": 5e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                                                "weight_decay": 0.01},
             [{"params": ["layer.weight"]}, {"params": ["layer.bias", "norm.weight"], "lr": 1e-2,
                                             "weight_decay": 0.0}],
             steps=7, schedule={"name": "linear", "num_warmup_steps": 2, "num_training_steps": 6}, seed=6)
    clip_case("clip_clipped", 1.0, seed=7)
    clip_case("clip_unclipped", 1000.0, seed=8)
    schedule_cases()
    print("wrote", os.path.normpath(OUT), file=sys.stderr)


if __name__ == "__main__":
    main()
