"""Independent masks and the torch reference for the mmattn tests.

Everything here is written from the rules' definitions (README, Masks; the presets' model sources),
not from the library: a layout is a list of segments described here, and each preset's predicate
says which (query position, key position) pairs the model lets through. The tests build the same
layout in mmattn and compare its mask and its outputs with these.
"""

import numpy as np
import torch


class Seg:
    """A segment: kind 'text' | 'image' | 'video', grid frames x rows x cols (text: 1 x 1 x n)."""

    def __init__(self, kind, frames, rows, cols, start):
        self.kind, self.frames, self.rows, self.cols, self.start = kind, frames, rows, cols, start
        self.length = frames * rows * cols

    def coord(self, pos):
        off = pos - self.start
        frame, rest = divmod(off, self.rows * self.cols)
        row, col = divmod(rest, self.cols)
        return frame, row, col


def segments_of(spec):
    """spec: list of ('text', n) | ('image', rows, cols) | ('video', frames, rows, cols)."""
    segs, start = [], 0
    for s in spec:
        if s[0] == "text":
            seg = Seg("text", 1, 1, s[1], start)
        elif s[0] == "image":
            seg = Seg("image", 1, s[1], s[2], start)
        else:
            seg = Seg("video", s[1], s[2], s[3], start)
        segs.append(seg)
        start += seg.length
    return segs


def build_layout(mmattn, spec):
    layout = mmattn.Layout()
    for s in spec:
        getattr(layout, "add_" + s[0])(*s[1:])
    return layout


def random_spec(rng, max_segments=4, videos=True):
    spec = []
    for _ in range(rng.integers(1, max_segments + 1)):
        r = rng.integers(0, 6 if videos else 5)
        if r <= 1:
            spec.append(("image", int(rng.integers(1, 10)), int(rng.integers(1, 10))))
        elif r == 2:
            spec.append(("image", int(rng.integers(1, 4)), int(rng.integers(1, 4))))  # smaller than windows
        elif r <= 4:
            spec.append(("text", int(rng.integers(1, 21))))
        else:
            spec.append(("video", int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 6))))
    return spec


# ---- One axis of a window, from NATTEN's and Swin's definitions ----

def natten_window(i, n, size, dilation=1):
    """NATTEN's neighbourhood of i on an axis of n: `size` positions of i's dilation group centred on
    i, shifted at the borders so it always holds `size` (or the whole group when it is shorter)."""
    group = i % dilation
    members = list(range(group, n, dilation))
    j = members.index(i)
    size = min(size, len(members))
    start = min(max(j - size // 2, 0), len(members) - size)
    return set(members[start:start + size])


def partition_window(i, n, size):
    """Swin / Qwen2.5-VL: fixed windows [w * size, (w + 1) * size) from 0; the last may be shorter."""
    lo = i // size * size
    return set(range(lo, min(lo + size, n)))


def axis_allows(kind, qi, ki, n, size, dilation=1):
    if kind == "sliding":
        return ki in natten_window(qi, n, size, dilation)
    return ki in partition_window(qi, n, size)


class Win2:
    def __init__(self, kind, h, w, dh=1, dw=1, causal=False):
        self.kind, self.h, self.w, self.dh, self.dw, self.causal = kind, h, w, dh, dw, causal

    def lib(self, mmattn):
        if self.kind == "sliding":
            w = mmattn.Window2D.sliding(self.h, self.w, self.dh, self.dw)
        else:
            w = mmattn.Window2D.partitioned(self.h, self.w)
        return w.and_causal() if self.causal else w

    def allows(self, seg, q, k):
        _, qr, qc = seg.coord(q)
        _, kr, kc = seg.coord(k)
        ok = axis_allows(self.kind, qr, kr, seg.rows, self.h, self.dh) and \
            axis_allows(self.kind, qc, kc, seg.cols, self.w, self.dw)
        return ok and (k <= q or not self.causal)


class Win3:
    """A video window, sliding or partitioned on every axis (dilation 1)."""

    def __init__(self, kind, f, h, w):
        self.kind, self.f, self.h, self.w = kind, f, h, w

    def lib(self, mmattn):
        ctor = mmattn.Window3D.sliding if self.kind == "sliding" else mmattn.Window3D.partitioned
        return ctor(self.f, self.h, self.w)

    def allows(self, seg, q, k):
        qf, qr, qc = seg.coord(q)
        kf, kr, kc = seg.coord(k)
        return axis_allows(self.kind, qf, kf, seg.frames, self.f) and \
            axis_allows(self.kind, qr, kr, seg.rows, self.h) and axis_allows(self.kind, qc, kc, seg.cols, self.w)


def random_win2(rng, dilation=True):
    if rng.integers(0, 2):
        odd = [1, 3, 5, 7]
        dh, dw = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if dilation and rng.integers(0, 3) == 0 else (1, 1)
        return Win2("sliding", int(rng.choice(odd)), int(rng.choice(odd)), dh, dw)
    return Win2("partitioned", int(rng.integers(1, 6)), int(rng.integers(1, 6)))


def random_win3(rng):
    if rng.integers(0, 2):
        odd = [1, 3, 5]
        return Win3("sliding", int(rng.choice(odd)), int(rng.choice(odd)), int(rng.choice(odd)))
    return Win3("partitioned", int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 4)))


# ---- The presets: (mmattn policy, independent predicate) ----

class Preset:
    """A preset with its parameters: `policy(mmattn)` builds the library's, `allows(segs, q, k)`
    is the model's mask written from its definition."""

    def __init__(self, name, make_policy, allows):
        self.name, self.policy, self.allows_fn = name, make_policy, allows

    def allows(self, segs, q, k):
        sq = next(s for s in segs if s.start <= q < s.start + s.length)
        sk = next(s for s in segs if s.start <= k < s.start + s.length)
        return self.allows_fn(sq, sk, q, k)

    def mask(self, segs, n, q_begin=0, q_end=None):
        q_end = n if q_end is None else q_end
        return np.array([[self.allows(segs, q, k) for k in range(n)] for q in range(q_begin, q_end)], dtype=bool)


def grid_kind(s):
    return s.kind in ("image", "video")


def random_preset(name, rng):
    """The preset `name` with random parameters, as (Preset)."""
    causal = lambda q, k: k <= q  # noqa: E731
    if name == "decoder_causal":
        return Preset(name, lambda m: m.Policy.decoder_causal(), lambda sq, sk, q, k: causal(q, k))
    if name == "dense":
        return Preset(name, lambda m: m.Policy.dense(), lambda sq, sk, q, k: True)
    if name == "gemma3_global":
        # transformers' Gemma3: causal OR (same image, token_type_ids), bidirectional inside an image.
        return Preset(name, lambda m: m.Policy.gemma3_global(),
                      lambda sq, sk, q, k: causal(q, k) or (sq is sk and grid_kind(sq)))
    if name == "gemma3_local":
        w = int(rng.integers(1, 25))
        return Preset(name, lambda m: m.Policy.gemma3_local(w),
                      lambda sq, sk, q, k: (causal(q, k) and q - k < w) or (sq is sk and grid_kind(sq)))
    if name == "sliding_causal":
        w = int(rng.integers(1, 25))
        return Preset(name, lambda m: m.Policy.sliding_causal(w), lambda sq, sk, q, k: causal(q, k) and q - k < w)
    if name == "streaming_sinks":
        w, sinks = int(rng.integers(1, 12)), int(rng.integers(1, 5))
        return Preset(name, lambda m: m.Policy.sliding_causal(w).with_sinks(sinks),
                      lambda sq, sk, q, k: causal(q, k) and (q - k < w or k < sinks))
    if name == "llama4_chunked":
        c = int(rng.integers(1, 25))
        return Preset(name, lambda m: m.Policy.llama4_chunked(c),
                      lambda sq, sk, q, k: causal(q, k) and q // c == k // c)
    if name == "vision_block_diagonal":
        return Preset(name, lambda m: m.Policy.vision_block_diagonal(), lambda sq, sk, q, k: sq is sk)
    if name == "qwen25vl_window":
        size = int(rng.integers(1, 9))

        def qwen(sq, sk, q, k):
            if sq is not sk:
                return False
            if sq.kind == "text":
                return True
            qf, qr, qc = sq.coord(q)
            kf, kr, kc = sq.coord(k)  # a video: windowed frame by frame
            return qf == kf and qr // size == kr // size and qc // size == kc // size
        return Preset(name, lambda m: m.Policy.qwen25vl_window(size), qwen)
    if name == "video_windows":
        w3 = random_win3(rng)
        return Preset(name, lambda m: m.Policy.video_windows(w3.lib(m)),
                      lambda sq, sk, q, k: w3.allows(sq, q, k) if (sq is sk and sq.kind == "video") else causal(q, k))
    if name == "structured":
        w2, w3 = random_win2(rng), random_win3(rng)

        def structured(sq, sk, q, k):
            if sq.kind == "text":  # text sees earlier text, images and videos by position
                return causal(q, k)
            if sq is not sk:  # images and videos see only themselves
                return False
            return w2.allows(sq, q, k) if sq.kind == "image" else w3.allows(sq, q, k)
        return Preset(name, lambda m: m.Policy.structured(w2.lib(m), w3.lib(m)), structured)
    raise ValueError(name)


PRESETS = ["decoder_causal", "dense", "gemma3_global", "gemma3_local", "sliding_causal", "streaming_sinks",
           "llama4_chunked", "vision_block_diagonal", "qwen25vl_window", "video_windows", "structured"]


# ---- The reference: torch's attention math in float64 ----

def torch_attention(q, k, v, mask, scale):
    """softmax(q k^T * scale + mask) v per head, mask additive (0 / -inf), in float64.
    q: [T, H, D], k, v: [S, KVH, D] (numpy), mask: [T, S] bool. GQA repeats each KV head over its
    group of H / KVH query heads. Rows with no allowed key are 0 (softmax of all -inf is NaN)."""
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float64)).permute(1, 0, 2)
    kt = torch.from_numpy(np.ascontiguousarray(k, dtype=np.float64)).permute(1, 0, 2)
    vt = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).permute(1, 0, 2)
    group = qt.shape[0] // kt.shape[0]
    kt, vt = kt.repeat_interleave(group, dim=0), vt.repeat_interleave(group, dim=0)
    m = torch.from_numpy(mask)
    bias = torch.zeros(m.shape, dtype=torch.float64).masked_fill(~m, float("-inf"))
    p = torch.softmax(qt @ kt.transpose(-1, -2) * scale + bias, dim=-1)
    out = (p @ vt).permute(1, 0, 2)
    out[~m.any(dim=1)] = 0
    return out.numpy()


def max_relative_error(actual, expected):
    """max |a - e| / max |e|; NaN or inf anywhere in `actual` gives inf, so any bound fails."""
    a = np.asarray(actual, dtype=np.float64)
    if a.shape != expected.shape or not np.isfinite(a).all():
        return float("inf")
    return float(np.max(np.abs(a - expected), initial=0.0) / max(np.max(np.abs(expected), initial=0.0), 1e-30))
