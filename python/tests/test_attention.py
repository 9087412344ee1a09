"""mmattn from Python against torch's attention math.

Every preset on random layouts (PRESETS x CASES_PER_PRESET cases): the library's mask equals the
independent predicate of masks.py pair for pair, and forward equals
softmax(q k^T * scale + mask) v computed by torch with the dense mask from each of the two, within
the fp32 bound 1e-5 (max |out - ref| / max |ref|). Views are random: Q as a slice of a fused QKV
buffer, K/V as [heads, tokens, dim] storage, out as a strided view of a larger buffer, all used in
place.
"""

import numpy as np
import pytest
import torch

import mmattn
from masks import (PRESETS, build_layout, max_relative_error, random_preset, random_spec, segments_of,
                   torch_attention)

CASES_PER_PRESET = 20
FP32_BOUND = 1e-5

torch.set_num_threads(1)


def random_heads(rng):
    kv = int(rng.integers(1, 3))
    return kv * int(rng.integers(1, 4)), kv, int(rng.choice([4, 8, 15, 16, 33]))


def random_views(rng, n_q, n_k, heads, kv_heads, dim):
    """Q, K, V, out as views the library must take in place: random storage orders."""
    fused = rng.standard_normal((n_k, heads + 2 * kv_heads, dim)).astype(np.float32)
    if n_q == n_k and rng.integers(0, 2):  # a fused QKV projection's output, sliced
        q, k, v = fused[:, :heads], fused[:, heads:heads + kv_heads], fused[:, heads + kv_heads:]
    else:
        q = rng.standard_normal((n_q, heads, dim)).astype(np.float32)
        k = rng.standard_normal((kv_heads, n_k, dim)).astype(np.float32).transpose(1, 0, 2)  # [heads, tokens, dim]
        v = np.ascontiguousarray(fused[:, heads + kv_heads:])
    if rng.integers(0, 2):
        big = np.full((n_q, heads + 3, dim + 5), np.nan, dtype=np.float32)  # padding stays NaN
        out = big[:, 1:heads + 1, 2:dim + 2]
    else:
        out = None
    return q, k, v, out


CASES = [(preset, i) for preset in PRESETS for i in range(CASES_PER_PRESET)]


@pytest.mark.parametrize("preset_name,case", CASES, ids=[f"{p}-{i}" for p, i in CASES])
def test_preset_against_torch(preset_name, case):
    rng = np.random.default_rng([PRESETS.index(preset_name), case, 15])
    spec = random_spec(rng)
    segs = segments_of(spec)
    layout = build_layout(mmattn, spec)
    n = len(layout)
    preset = random_preset(preset_name, rng)
    heads, kv_heads, dim = random_heads(rng)
    scale = None if rng.integers(0, 2) else float(rng.uniform(0.05, 0.5))
    attention = mmattn.MultimodalAttention(layout, preset.policy(mmattn), num_heads=heads, num_kv_heads=kv_heads,
                                           head_dim=dim, scale=scale, threads=int(rng.integers(1, 3)),
                                           tile_query=int(rng.choice([8, 16, 128])),
                                           tile_key=int(rng.choice([8, 24, 128])))
    where = f"{preset_name} {spec} heads {heads}/{kv_heads} dim {dim}"

    lib_mask = attention.mask()
    ind_mask = preset.mask(segs, n)
    assert lib_mask.shape == ind_mask.shape == (n, n)
    diff = np.argwhere(lib_mask != ind_mask)
    assert diff.size == 0, f"{where}: masks differ at (q, k) {diff[:5].tolist()}"

    q, k, v, out = random_views(rng, n, n, heads, kv_heads, dim)
    result, lse = attention.forward(q, k, v, out=out, return_lse=True)
    if out is not None:
        assert result is out and np.isnan(out.base[:, 0]).all() and np.isnan(out.base[:, :, :2]).all()
    s = attention.scale
    for mask in (lib_mask, ind_mask):
        err = max_relative_error(result, torch_attention(q, k, v, mask, s))
        assert err <= FP32_BOUND, f"{where}: max relative error {err:.3g}"
    # Log-sum-exp against torch's logsumexp of the masked scores (-inf for a row that sees nothing).
    qt = torch.from_numpy(np.ascontiguousarray(q, dtype=np.float64)).permute(1, 0, 2)
    kt = torch.from_numpy(np.ascontiguousarray(k, dtype=np.float64)).permute(1, 0, 2)
    kt = kt.repeat_interleave(heads // kv_heads, dim=0)
    scores = (qt @ kt.transpose(-1, -2) * s).masked_fill(~torch.from_numpy(ind_mask), float("-inf"))
    expected_lse = torch.logsumexp(scores, dim=-1).T.numpy()
    empty = ~ind_mask.any(axis=1)
    assert np.all(np.isneginf(lse[empty])), where
    assert np.max(np.abs(lse[~empty] - expected_lse[~empty]) / np.maximum(1, np.abs(expected_lse[~empty])),
                  initial=0) <= FP32_BOUND, where


def test_case_count():
    assert len(CASES) >= 200


@pytest.mark.parametrize("heads,kv_heads", [(8, 2), (6, 1), (4, 4), (12, 3)])
def test_gqa_and_mqa(heads, kv_heads):
    rng = np.random.default_rng(heads * 100 + kv_heads)
    spec = [("image", 9, 11), ("text", 17), ("image", 5, 4), ("text", 30)]
    layout, segs = build_layout(mmattn, spec), segments_of(spec)
    preset = random_preset("structured", rng)
    attention = mmattn.MultimodalAttention(layout, preset.policy(mmattn), num_heads=heads, num_kv_heads=kv_heads,
                                           head_dim=32)
    n = len(layout)
    q = rng.standard_normal((n, heads, 32)).astype(np.float32)
    k = rng.standard_normal((n, kv_heads, 32)).astype(np.float32)
    v = rng.standard_normal((n, kv_heads, 32)).astype(np.float32)
    out = attention.forward(q, k, v)
    assert max_relative_error(out, torch_attention(q, k, v, preset.mask(segs, n), attention.scale)) <= FP32_BOUND


@pytest.mark.parametrize("seed", range(6))
def test_chunked_prefill(seed):
    """Chunks cut by safe_chunk_ends, one plan per chunk: equal to torch over the whole sequence."""
    rng = np.random.default_rng([seed, 77])
    spec = random_spec(rng, max_segments=5, videos=False) + [("text", int(rng.integers(5, 30)))]
    layout, segs = build_layout(mmattn, spec), segments_of(spec)
    name = ["structured", "gemma3_global", "decoder_causal"][seed % 3]
    preset = random_preset(name, rng)
    policy = preset.policy(mmattn)
    n, heads, kv_heads, dim = len(layout), 4, 2, 16
    q = rng.standard_normal((n, heads, dim)).astype(np.float32)
    k = rng.standard_normal((n, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((n, kv_heads, dim)).astype(np.float32)
    out = np.full((n, heads, dim), np.nan, dtype=np.float32)
    begin = 0
    ends = mmattn.safe_chunk_ends(layout, policy, int(rng.integers(3, 40)))
    assert ends[-1] == n and len(ends) >= 1
    for end in ends:
        chunk = mmattn.MultimodalAttention(layout, policy, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim,
                                           query_begin=begin, query_end=end)
        assert chunk.num_queries == end - begin
        # K/V hold only the keys written so far (positions < end): a chunk must not read past them.
        k_written = np.where(np.arange(n)[:, None, None] < end, k, np.nan).astype(np.float32)
        chunk.forward(q[begin:end], k_written, v, out=out[begin:end])
        begin = end
    assert max_relative_error(out, torch_attention(q, k, v, preset.mask(segs, n), 1 / np.sqrt(dim))) <= FP32_BOUND


def test_chunk_that_reads_unwritten_keys_is_refused():
    layout = mmattn.Layout().add_text(4).add_image(4, 4).add_text(4)
    with pytest.raises(mmattn.Error, match="not written yet"):
        mmattn.MultimodalAttention(layout, mmattn.Policy.gemma3_global(), num_heads=2, head_dim=8, query_end=10)


def paged(cache, block_size, table):
    """A [tokens, heads, dim] cache as a pool of blocks placed by the block table; unused blocks
    and the last block's tail are NaN, so a read outside the table's tokens shows."""
    nan = np.uint16(0x7FC0) if cache.dtype == np.uint16 else np.nan  # bf16 bits of a NaN
    pool = np.full((len(table) + 2, block_size) + cache.shape[1:], nan, dtype=cache.dtype)
    for b, physical in enumerate(table):
        rows = cache[b * block_size:(b + 1) * block_size]
        pool[physical, :rows.shape[0]] = rows
    return pool


@pytest.mark.parametrize("qo,kv", [("f32", "f32"), ("f32", "bf16"), ("f32", "f16"), ("bf16", "bf16"), ("f16", "f16")])
@pytest.mark.parametrize("paged_cache", [True, False])
def test_decode(qo, kv, paged_cache):
    """Decode steps over a growing layout: each step's new token over the cache, against torch on
    the values the cache holds (rounded to its type)."""
    rng = np.random.default_rng([len(qo), len(kv), ["f32", "bf16", "f16"].index(kv), int(paged_cache)])
    heads, kv_heads, dim = 8, 2, 24
    spec = [("image", 6, 6), ("text", 9), ("image", 4, 5)]
    prompt = len(build_layout(mmattn, spec))
    total = prompt + 2 + 6  # the prompt, 2 more text tokens, 6 decode steps
    q = rng.standard_normal((total, heads, dim)).astype(np.float32)
    k = rng.standard_normal((total, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((total, kv_heads, dim)).astype(np.float32)
    as_type = {"f32": lambda x: x, "bf16": mmattn.to_bf16, "f16": lambda x: x.astype(np.float16)}
    as_float = {"f32": lambda x: x, "bf16": mmattn.from_bf16, "f16": lambda x: x.astype(np.float32)}
    kc, vc, qc = as_type[kv](k), as_type[kv](v), as_type[qo](q)
    preset = random_preset("structured", rng)
    bound = {"f32": FP32_BOUND, "bf16": 2.0**-8 + FP32_BOUND, "f16": 2.0**-11 + FP32_BOUND}[qo]
    for step in range(1, 7):
        step_spec = spec + [("text", 2 + step)]  # 2 text tokens of the prompt's tail, then the new ones
        layout, segs = build_layout(mmattn, step_spec), segments_of(step_spec)
        n = len(layout)
        if paged_cache:
            table = rng.permutation(-(-n // 4) + 2)[:-(-n // 4)].astype(np.int32)  # shuffled, 2 blocks spare
            pk, pv = paged(kc[:n], 4, table), paged(vc[:n], 4, table)
            out, lse = mmattn.decode(layout, preset.policy(mmattn), qc[n - 1:n], pk, pv, block_table=table,
                                     return_lse=True, threads=2)
        else:
            out, lse = mmattn.decode(layout, preset.policy(mmattn), qc[n - 1:n], kc[:n], vc[:n], return_lse=True)
        assert out.dtype == qc.dtype and lse.shape == (1, heads)
        ref = torch_attention(as_float[qo](qc[n - 1:n]), as_float[kv](kc[:n]), as_float[kv](vc[:n]),
                              preset.mask(segs, n, n - 1, n), 1 / np.sqrt(dim))
        err = max_relative_error(as_float[qo](out), ref)
        assert err <= bound, f"{qo}/{kv} step {step}: {err:.3g}"


@pytest.mark.parametrize("paged_cache", [False, True])
def test_decode_step_shared_by_layers(paged_cache):
    """Generation: the layout grows by extend_text, each step is planned once and run by every
    layer over that layer's cache; caches are preallocated to a capacity whose unwritten tail is
    NaN (never read). Against torch per layer and step."""
    rng = np.random.default_rng([9, int(paged_cache)])
    heads, kv_heads, dim, layers, capacity, block = 6, 3, 16, 3, 120, 8
    spec = [("text", 5), ("image", 7, 6), ("text", 11)]
    layout = build_layout(mmattn, spec)
    policy_preset = random_preset("gemma3_global", rng)
    policy = policy_preset.policy(mmattn)
    k = np.full((layers, capacity, kv_heads, dim), np.nan, np.float32)
    v = np.full((layers, capacity, kv_heads, dim), np.nan, np.float32)
    q_all = rng.standard_normal((layers, capacity, heads, dim)).astype(np.float32)
    text_tail = 11
    for step in range(5):
        n = len(layout)
        k[:, :n] = np.where(np.isnan(k[:, :n]), rng.standard_normal(k[:, :n].shape), k[:, :n])
        v[:, :n] = np.where(np.isnan(v[:, :n]), rng.standard_normal(v[:, :n].shape), v[:, :n])
        decode = mmattn.DecodeStep(layout, policy, new_tokens=1)
        assert decode.key_end <= n and decode.query_begin == n - 1 and decode.new_tokens == 1
        segs = segments_of(spec[:-1] + [("text", text_tail)])
        mask = policy_preset.mask(segs, n, n - 1, n)
        for layer in range(layers):
            q = q_all[layer, n - 1:n]
            if paged_cache:
                table = rng.permutation(capacity // block).astype(np.int32)
                pool_k = np.full((capacity // block, block, kv_heads, dim), np.nan, np.float32)
                pool_v = pool_k.copy()
                for b, physical in enumerate(table):
                    pool_k[physical] = k[layer, b * block:(b + 1) * block]
                    pool_v[physical] = v[layer, b * block:(b + 1) * block]
                out = decode.forward(q, pool_k, pool_v, block_table=table, threads=2)
            else:
                out = decode.forward(q, k[layer], v[layer])  # the whole capacity: only [0, key_end) is read
            ref = torch_attention(q, k[layer, :n], v[layer, :n], mask, 1 / np.sqrt(dim))
            assert max_relative_error(out, ref) <= FP32_BOUND, f"step {step} layer {layer}"
        layout.extend_text(1)
        text_tail += 1
    assert len(layout.segments) == 3  # extend_text grew the last text segment
    with pytest.raises(mmattn.Error, match="q: holds 2 tokens but the decode step has 1 new tokens"):
        decode.forward(q_all[0, :2], k[0], v[0])
    with pytest.raises(mmattn.Error, match="k: the cache holds 3 tokens"):
        decode.forward(q_all[0, :1], k[0, :3], v[0, :3])


@pytest.mark.parametrize("paged_cache,split_kv", [(False, False), (False, True), (True, False), (True, True)])
def test_batched_sequences(paged_cache, split_kv):
    """A batch of sequences with their own layouts, presets and query ranges (whole prefill, a
    chunk, decode of the last token), packed Q/O, caches per sequence or one shared paged pool:
    each sequence's rows against torch."""
    rng = np.random.default_rng([11, int(paged_cache), int(split_kv)])
    heads, kv_heads, dim, block = 4, 2, 16, 4
    entries = []
    for i, name in enumerate(["structured", "gemma3_global", "decoder_causal", "qwen25vl_window"]):
        spec = random_spec(rng, videos=False) + [("text", int(rng.integers(2, 9)))]
        preset = random_preset(name, rng)
        n = sum(s.length for s in segments_of(spec))
        begin, end = [(0, n), (n - 1, n), (0, n), (n - 1, n)][i]  # prefill or decode of the last token
        entries.append((spec, preset, n, begin, end))
    sequences = [(build_layout(mmattn, spec), p.policy(mmattn), b, e) for spec, p, n, b, e in entries]
    batch = mmattn.BatchedAttention(sequences, num_heads=heads, num_kv_heads=kv_heads, head_dim=dim, threads=2)
    offsets = batch.query_offsets
    assert offsets[0] == 0 and offsets[-1] == batch.total_queries and batch.num_sequences == 4
    q = rng.standard_normal((batch.total_queries, heads, dim)).astype(np.float32)
    ks = [rng.standard_normal((n, kv_heads, dim)).astype(np.float32) for _, _, n, _, _ in entries]
    vs = [rng.standard_normal((n, kv_heads, dim)).astype(np.float32) for _, _, n, _, _ in entries]
    if paged_cache:  # one pool shared by every sequence, blocks handed out shuffled
        counts = [-(-n // block) for _, _, n, _, _ in entries]
        physical = rng.permutation(sum(counts) + 3).astype(np.int32)
        tables, at = [], 0
        pool_k = np.full((sum(counts) + 3, block, kv_heads, dim), np.nan, np.float32)
        pool_v = pool_k.copy()
        for i, c in enumerate(counts):
            tables.append(physical[at:at + c].copy())
            at += c
            for b, p in enumerate(tables[-1]):
                rows = ks[i][b * block:(b + 1) * block]
                pool_k[p, :len(rows)] = rows
                pool_v[p, :len(rows)] = vs[i][b * block:(b + 1) * block]
        out = batch.forward(q, pool_k, pool_v, block_tables=tables, split_kv=split_kv)
    else:
        out = batch.forward(q, ks, vs, split_kv=split_kv)
    for i, (spec, preset, n, begin, end) in enumerate(entries):
        rows = slice(offsets[i], offsets[i + 1])
        ref = torch_attention(q[rows], ks[i], vs[i], preset.mask(segments_of(spec), n, begin, end), 1 / np.sqrt(dim))
        assert max_relative_error(out[rows], ref) <= FP32_BOUND, f"sequence {i} ({preset.name})"
    with pytest.raises(mmattn.Error, match="k: holds 3 caches but the batch has 4 sequences"):
        batch.forward(q, ks[:3], vs)


@pytest.mark.parametrize("paged_cache,decode", [(False, True), (True, True), (True, False)])
def test_cascade_shares_a_prefix(paged_cache, decode):
    """Sequences sharing an image prefix, each with its own text suffix (different lengths and
    presets that see the whole prefix), decoding or prefilling their suffixes: each sequence's
    rows against torch over its whole cache. The sequences' own caches hold NaN in the prefix
    rows, which the cascade must never read; the prefix K/V come separately."""
    rng = np.random.default_rng([13, int(paged_cache), int(decode)])
    heads, kv_heads, dim, block = 6, 2, 16, 4
    prefix_spec = [("image", 5, 6), ("text", 3)]
    prefix = sum(s.length for s in segments_of(prefix_spec))
    entries = []
    for i, name in enumerate(["structured", "decoder_causal", "gemma3_global", "structured", "decoder_causal"]):
        spec = prefix_spec + [("text", int(rng.integers(1, 12)))]
        n = sum(s.length for s in segments_of(spec))
        entries.append((spec, random_preset(name, rng), n, n - 1 if decode else prefix))
    sequences = [(build_layout(mmattn, spec), p.policy(mmattn), b, None) for spec, p, n, b in entries]
    cascade = mmattn.CascadeAttention(sequences, prefix_tokens=prefix, num_heads=heads, num_kv_heads=kv_heads,
                                      head_dim=dim, threads=2)
    assert cascade.prefix_tokens == prefix and cascade.num_sequences == len(entries)
    offsets = cascade.query_offsets
    q = rng.standard_normal((cascade.total_queries, heads, dim)).astype(np.float32)
    shared_k = rng.standard_normal((prefix, kv_heads, dim)).astype(np.float32)
    shared_v = rng.standard_normal((prefix, kv_heads, dim)).astype(np.float32)
    ks, vs = [], []
    for _, _, n, _ in entries:
        ks.append(np.concatenate([shared_k, rng.standard_normal((n - prefix, kv_heads, dim)).astype(np.float32)]))
        vs.append(np.concatenate([shared_v, rng.standard_normal((n - prefix, kv_heads, dim)).astype(np.float32)]))
    own_k = [np.where(np.arange(len(k))[:, None, None] < prefix, np.nan, k).astype(np.float32) for k in ks]
    own_v = [np.where(np.arange(len(v))[:, None, None] < prefix, np.nan, v).astype(np.float32) for v in vs]
    if paged_cache:
        tables = [rng.permutation(-(-len(k) // block) + 1)[:-(-len(k) // block)].astype(np.int32) for k in own_k]
        pk = [paged(k, block, t) for k, t in zip(own_k, tables)]
        pv = [paged(v, block, t) for v, t in zip(own_v, tables)]
        out, lse = cascade.forward(q, shared_k, shared_v, pk, pv, block_tables=tables, return_lse=True)
    else:
        out, lse = cascade.forward(q, shared_k, shared_v, own_k, own_v, return_lse=True)
    assert lse.shape == (cascade.total_queries, heads) and np.isfinite(lse).all()
    for i, (spec, preset, n, begin) in enumerate(entries):
        rows = slice(offsets[i], offsets[i + 1])
        ref = torch_attention(q[rows], ks[i], vs[i], preset.mask(segments_of(spec), n, begin, n), 1 / np.sqrt(dim))
        assert max_relative_error(out[rows], ref) <= FP32_BOUND, f"sequence {i} ({preset.name})"
    with pytest.raises(mmattn.Error, match="prefix_k holds 3 tokens but the shared prefix has"):
        cascade.forward(q, shared_k[:3], shared_v[:3], own_k, own_v)


def test_cascade_refuses_a_query_that_cannot_see_the_prefix():
    layout = mmattn.Layout().add_image(4, 4).add_text(8)
    policy = mmattn.Policy.structured()
    with pytest.raises(mmattn.Error, match="cascade: sequence 0: its queries start at 10, inside the shared prefix"):
        mmattn.CascadeAttention([(layout, policy, 10, None)], prefix_tokens=12, num_heads=2, head_dim=8)


def test_bf16_convention_matches_torch():
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32) * 100
    x[:4] = [0.0, -0.0, np.inf, 1.0 + 2.0**-8]  # 1 + 2^-8 rounds to even: 1.0
    bits = mmattn.to_bf16(x)
    torch_bits = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    assert bits.dtype == np.uint16 and np.array_equal(bits, torch_bits)
    assert np.array_equal(mmattn.from_bf16(bits), torch.from_numpy(x).bfloat16().float().numpy())


def test_torch_tensors_through_numpy_share_memory():
    layout = mmattn.Layout().add_image(3, 3).add_text(5)
    attention = mmattn.MultimodalAttention(layout, mmattn.Policy.structured(mmattn.Window2D.sliding(3, 3)),
                                           num_heads=2, head_dim=8)
    q, k, v = (torch.randn(14, 2, 8) for _ in range(3))
    out = torch.full((14, 2, 8), float("nan"))
    attention.forward(q.numpy(), k.numpy(), v.numpy(), out=out.numpy())
    assert torch.isfinite(out).all()
    assert max_relative_error(out.numpy(), torch_attention(q.numpy(), k.numpy(), v.numpy(), attention.mask(),
                                                           attention.scale)) <= FP32_BOUND


def test_dtype_by_value_not_by_descriptor():
    """A float32 dtype that is not numpy's singleton descriptor (here one carrying metadata) is float32."""
    layout = mmattn.Layout().add_text(6)
    attention = mmattn.MultimodalAttention(layout, mmattn.Policy.decoder_causal(), num_heads=1, head_dim=4)
    q = np.random.default_rng(2).standard_normal((6, 1, 4)).astype(np.float32)
    tagged = q.view(np.dtype(np.float32, metadata={"unit": "none"}))
    assert tagged.dtype is not np.dtype(np.float32)
    assert np.array_equal(attention.forward(tagged, tagged, tagged), attention.forward(q, q, q))


def test_plan_report_svg_stats():
    layout = mmattn.Layout.images_then_text(2, 8, 8, 40)
    attention = mmattn.MultimodalAttention(layout, mmattn.Policy.structured(), num_heads=4, head_dim=16)
    assert "plan report" in attention.plan_report(threads=2)
    assert attention.svg().lstrip().startswith("<svg") or "<svg" in attention.svg()
    stats = attention.stats()
    assert stats["allowed_pairs"] == int(attention.mask().sum())
    assert stats["dense_pairs"] == len(layout) ** 2
    assert 0 < stats["efficiency"] <= 1
    assert sum(r["allowed_pairs"] for r in stats["regions"].values()) == stats["allowed_pairs"]


def test_forward_releases_the_gil():
    """While one thread runs a long forward, another keeps running Python: the longest pause the
    main thread sees is far shorter than the forward."""
    import threading
    import time
    layout = mmattn.Layout.images_then_text(4, 16, 16, 512)
    attention = mmattn.MultimodalAttention(layout, mmattn.Policy.dense(), num_heads=8, head_dim=64, threads=1)
    n = len(layout)
    q = np.random.default_rng(0).standard_normal((n, 8, 64)).astype(np.float32)
    out = np.empty_like(q)
    elapsed = []
    worker = threading.Thread(target=lambda: elapsed.extend(attention._time_forward(q, q, q, out, 3)))
    worker.start()
    gaps, last = [], time.perf_counter()
    while worker.is_alive():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    worker.join()
    assert max(gaps) < 0.5 * sum(elapsed), f"main thread paused {max(gaps):.3f} s during {sum(elapsed):.3f} s"
