"""The Python binding's cost, and mmattn against torch's masked attention, on the 1536-token
structured workload of bench/isa_paths.cpp (4 images of 16 x 16 + 512 text, 32 heads of 128, fp32,
image 7 x 7 sliding window, text causal: Policy.structured()).

Three timings, in rounds so that drift hits all alike, each reported as the median of --reps:
  python forward  attention.forward(q, k, v, out=out) timed in Python around the call;
  C++ forward     the same library call timed inside the module (MultimodalAttention._time_forward);
                  that call is also timed in Python, and the difference of the two times of one call
                  is what the binding adds (argument checks, views, GIL release), free of drift
                  between rounds;
  torch masked    softmax(q k^T * scale + mask) v in torch, fp32, the dense additive mask built
                  once from the same policy (transformers' eager attention), on the same inputs.
Both libraries use --threads threads. The fixed cost of one binding call is also shown on a
1-token workload, where it is all there is.

    bench_binding.py [--reps N] [--threads T] [--quick]
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch

import mmattn


def torch_masked_attention(q, k, v, bias, scale):
    """q [H, T, D], k/v [KVH, S, D] torch tensors, bias [T, S] additive: transformers' eager math."""
    groups = q.shape[0] // k.shape[0]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
    return torch.softmax(q @ k.transpose(1, 2) * scale + bias, dim=-1) @ v


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="threads for mmattn and torch (default 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 round, for CI")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.threads < 1:
        parser.error("--reps and --threads must be >= 1")
    reps = 1 if args.quick else args.reps
    images, side, text, heads, dim = (1, 4, 16, 2, 16) if args.quick else (4, 16, 512, 32, 128)

    torch.set_num_threads(args.threads)
    layout = mmattn.Layout.images_then_text(images, side, side, text)
    attention = mmattn.MultimodalAttention(layout, mmattn.Policy.structured(), num_heads=heads, head_dim=dim,
                                           threads=args.threads)
    n = len(layout)
    rng = np.random.default_rng(7)
    q, k, v = (rng.standard_normal((n, heads, dim)).astype(np.float32) for _ in range(3))
    out = np.empty_like(q)
    # torch's operands: [heads, tokens, dim] copies, and the dense mask, built before any timing.
    qt, kt, vt = (torch.from_numpy(np.ascontiguousarray(x.transpose(1, 0, 2))) for x in (q, k, v))
    bias = torch.zeros(n, n).masked_fill(~torch.from_numpy(attention.mask()), float("-inf"))

    def python_forward():
        t0 = time.perf_counter()
        attention.forward(q, k, v, out=out)
        return time.perf_counter() - t0

    paired = []  # per call: (time in Python around the call, time in C++ around the library call)

    def cpp_forward():
        t0 = time.perf_counter()
        inner = attention._time_forward(q, k, v, out, 1)[0]
        paired.append((time.perf_counter() - t0, inner))
        return inner

    torch_out = None

    def torch_forward():
        nonlocal torch_out
        t0 = time.perf_counter()
        torch_out = torch_masked_attention(qt, kt, vt, bias, attention.scale)
        return time.perf_counter() - t0

    runs = {"python forward": python_forward, "C++ forward": cpp_forward, "torch masked": torch_forward}
    for run in runs.values():  # warm-up: first-touch pages, thread pools, packed-block caches
        run()
    paired.clear()
    times = {name: [] for name in runs}
    names = list(runs)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(runs[name]())
    med = {name: statistics.median(t) for name, t in times.items()}

    # Exactness: mmattn and torch on the same inputs agree (torch's fp32 has its own rounding).
    attention.forward(q, k, v, out=out)
    ref = torch_out.permute(1, 0, 2).numpy()
    diff = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))

    # The fixed cost of one call: a 1-token layout, where the kernel is negligible.
    tiny = mmattn.MultimodalAttention(mmattn.Layout().add_text(1), mmattn.Policy.decoder_causal(), num_heads=1,
                                      head_dim=8, threads=1)
    tq = np.ones((1, 1, 8), np.float32)
    tout = np.empty_like(tq)
    calls = 200 if args.quick else 2000
    t0 = time.perf_counter()
    for _ in range(calls):
        tiny.forward(tq, tq, tq, out=tout)
    per_call = (time.perf_counter() - t0) / calls
    inner = statistics.median(tiny._time_forward(tq, tq, tq, tout, calls))

    stats = attention.stats()
    print(f"workload: {images} images of {side} x {side} + {text} text = {n} tokens, {heads} heads of {dim}, fp32, "
          f"structured 7 x 7; {args.threads} threads; median of {reps}")
    print(f"allowed pairs per head: {stats['allowed_pairs']} of {stats['dense_pairs']} "
          f"(density {stats['density']:.3f})")
    print(f"{'run':<16} {'median ms':>10}")
    for name in names:
        print(f"{name:<16} {med[name] * 1e3:>10.2f}")
    overhead = statistics.median((outer - inner) / inner for outer, inner in paired)
    print(f"binding overhead: {overhead * 100:.4f}% of the C++ forward (median over calls of the time around the "
          f"call in Python less the time around the library call in C++, same call)")
    print(f"one binding call on a 1-token layout: {per_call * 1e6:.1f} us in Python, {inner * 1e6:.1f} us in C++")
    print(f"mmattn vs torch masked attention: {med['torch masked'] / med['python forward']:.2f}x faster; "
          f"max |mmattn - torch| / max |torch| = {diff:.2e}")
    if not diff <= 1e-4:  # NaN fails too; fp32 against fp32, both rounding
        print("FAILED: mmattn and torch disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
