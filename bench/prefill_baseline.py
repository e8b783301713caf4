#!/usr/bin/env python3
"""FP16 baseline for bench_prefill: torch scaled_dot_product_attention on the same problems with an
uncompressed fp16 prefix. Run on the GPU machine only (needs torch with CUDA).

  chunk:  q [1, 32, 2048, 128] against K/V [1, 8, 32768 + 2048, 128] (GQA 4), causal with the mask
          offset by the prefix: query i (position 32768 + i) attends keys 0 .. 32768 + i. This is the
          lower-right-aligned causal mask (torch.nn.attention.bias.causal_lower_right), which the
          flash / memory-efficient backends run without materialising a mask; the same work as
          bench_prefill's BM_Prefill (kAppended: the chunk is part of the keys).
  verify: q [1, 32, 8, 128] against K/V [1, 8, 32768 + 8, 128], the same mask (BM_Verify).

GQA: enable_gqa=True when this torch supports it with the causal bias, else K/V repeated to 32 heads
(the same flops; more bytes read). Timing: CUDA events around each call, median over --iters calls
after --warmup calls. Prints one JSON line.

  python3 bench/prefill_baseline.py [--iters 50] [--warmup 10]
"""
import argparse
import json

import torch
import torch.nn.functional as F

Q_HEADS, KV_HEADS, HEAD_DIM, PREFIX = 32, 8, 128, 32768


def make_mask(chunk, keys, device):
    """Lower-right causal bias if available, else an explicit boolean mask (True = attend)."""
    try:
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(chunk, keys), "causal_lower_right"
    except ImportError:
        i = torch.arange(chunk, device=device).unsqueeze(1)
        j = torch.arange(keys, device=device).unsqueeze(0)
        return (j <= i + (keys - chunk)), "bool_mask"


def sdpa_runner(chunk, device):
    keys = PREFIX + chunk
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, Q_HEADS, chunk, HEAD_DIM, device=device, dtype=torch.float16, generator=g)
    k = torch.randn(1, KV_HEADS, keys, HEAD_DIM, device=device, dtype=torch.float16, generator=g)
    v = torch.randn(1, KV_HEADS, keys, HEAD_DIM, device=device, dtype=torch.float16, generator=g)
    mask, mask_kind = make_mask(chunk, keys, device)
    try:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        torch.cuda.synchronize()
        return (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)), mask_kind, "enable_gqa"
    except (TypeError, RuntimeError, NotImplementedError):
        group = Q_HEADS // KV_HEADS
        ke = k.repeat_interleave(group, dim=1)
        ve = v.repeat_interleave(group, dim=1)
        return (lambda: F.scaled_dot_product_attention(q, ke, ve, attn_mask=mask)), mask_kind, "repeated_kv"


def median_ms(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(iters):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def flops(chunk):
    keys = chunk * PREFIX + chunk * (chunk + 1) / 2
    return 4.0 * Q_HEADS * HEAD_DIM * keys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    device = "cuda"
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "prefix": PREFIX}
    for name, chunk in (("chunk2048", 2048), ("verify8", 8)):
        fn, mask_kind, gqa = sdpa_runner(chunk, device)
        ms = median_ms(fn, args.iters, args.warmup)
        result[name + "_ms"] = round(ms, 4)
        result[name + "_tflops"] = round(flops(chunk) / (ms * 1e-3) / 1e12, 2)
        result[name + "_mask"] = mask_kind
        result[name + "_gqa"] = gqa
        del fn
        torch.cuda.empty_cache()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
