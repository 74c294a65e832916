#!/usr/bin/env python3
"""Replays the golden LoRA training trajectory (tests/data/golden manifest `training`) in plain PyTorch,
in float64 (argument 64) or float32 (32), to show how much float rounding moves it: the tolerances
of tests/test_training_golden.cc come from here. Debian's torch: /usr/bin/python3 scripts/replay_golden_training.py 64
"""
import json, struct, sys, math
import os
import numpy as np, torch
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DT = {"F16": np.float16, "F32": np.float32, "BF16": None}
def load(path):
    f = open(path, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); data = f.read(); out = {}
    for k, v in h.items():
        if k == '__metadata__': continue
        a, b = v['data_offsets']
        out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype=DT[v['dtype']]).reshape(v['shape']).astype(np.float64))
    return out
dtype = torch.float64 if sys.argv[1] == '64' else torch.float32
G = ROOT + '/tests/data/golden/'
W = {k: v.to(dtype) for k, v in load(ROOT + '/assets/models/gpt2-mini/model.safetensors').items()}
man = json.load(open(G + 'manifest.json'))['training']
init = load(G + man['adapter_init'] + '/adapter_model.safetensors')
final = load(G + man['adapter_final'] + '/adapter_model.safetensors')
P = {k: v.to(dtype).clone().requires_grad_(True) for k, v in init.items()}
ids = man['ids']; T = max(map(len, ids)); B = len(ids)
x = torch.zeros(B, T, dtype=torch.long); mask = torch.zeros(B, T, dtype=torch.bool)
for i, r in enumerate(ids): x[i, :len(r)] = torch.tensor(r); mask[i, :len(r)] = True
H, nh = 256, 4; hd = H // nh
def ln(h, p): return torch.nn.functional.layer_norm(h, (H,), W[p + '.weight'], W[p + '.bias'], 1e-5)
def gelu_new(u): return 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
def fwd():
    h = W['transformer.wte.weight'][x] + W['transformer.wpe.weight'][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    allow = causal[None, None] & mask[:, None, None, :]
    for l in range(4):
        p = f'transformer.h.{l}.'
        a = ln(h, p + 'ln_1')
        qkv = a @ W[p + 'attn.c_attn.weight'] + W[p + 'attn.c_attn.bias']
        A = P[f'base_model.model.{p}attn.c_attn.lora_A.weight']; Bm = P[f'base_model.model.{p}attn.c_attn.lora_B.weight']
        qkv = qkv + (a @ A.t() @ Bm.t()) * 2.0
        q, k, v = qkv.split(H, -1)
        q, k, v = [t.view(B, T, nh, hd).transpose(1, 2) for t in (q, k, v)]
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        s = s.masked_fill(~allow, torch.finfo(dtype).min)
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
        h = h + o @ W[p + 'attn.c_proj.weight'] + W[p + 'attn.c_proj.bias']
        m = ln(h, p + 'ln_2')
        h = h + gelu_new(m @ W[p + 'mlp.c_fc.weight'] + W[p + 'mlp.c_fc.bias']) @ W[p + 'mlp.c_proj.weight'] + W[p + 'mlp.c_proj.bias']
    h = ln(h, 'transformer.ln_f')
    logits = h @ W['transformer.wte.weight'].t()
    labels = x.masked_fill(~mask, -100)
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
opt = torch.optim.AdamW(list(P.values()), lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
for step in range(10):
    opt.zero_grad(); loss = fwd(); loss.backward(); opt.step()
    print(f'step {step+1} loss {loss.item():.7f} golden {man["losses"][step]:.7f} diff {loss.item()-man["losses"][step]:.2e}')
worst = max((P[k].detach() - final[k]).abs().max().item() for k in P)
print('adapter max diff vs golden', worst)
k = 'base_model.model.transformer.h.1.attn.c_attn.lora_B.weight'
print('h1 B[901]', P[k].detach().view(-1)[901].item(), 'golden', final[k].view(-1)[901].item())
