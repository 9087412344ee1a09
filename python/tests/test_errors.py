"""Bad input raises mmattn.Error (a ValueError) carrying the C++ library's message, before anything
is written."""

import numpy as np
import pytest
import torch

import mmattn


def make(heads=4, kv_heads=2, dim=8, policy=None):
    layout = mmattn.Layout().add_image(3, 3).add_text(5)
    return layout, mmattn.MultimodalAttention(layout, policy or mmattn.Policy.structured(mmattn.Window2D.sliding(3, 3)),
                                              num_heads=heads, num_kv_heads=kv_heads, head_dim=dim)


def arrays(n=14, heads=4, kv_heads=2, dim=8, dtype=np.float32):
    rng = np.random.default_rng(1)
    return (rng.standard_normal((n, heads, dim)).astype(dtype), rng.standard_normal((n, kv_heads, dim)).astype(dtype),
            rng.standard_normal((n, kv_heads, dim)).astype(dtype))


def test_error_is_a_value_error():
    assert issubclass(mmattn.Error, ValueError)


def test_heads_that_do_not_divide():
    with pytest.raises(mmattn.Error, match=r"num_kv_heads \(3\) must divide num_heads \(8\)"):
        make(heads=8, kv_heads=3)


def test_even_sliding_window():
    layout = mmattn.Layout().add_image(4, 4)
    with pytest.raises(mmattn.Error, match="needs odd sizes"):
        mmattn.MultimodalAttention(layout, mmattn.Policy.structured(mmattn.Window2D.sliding(4, 3)), num_heads=1,
                                   head_dim=4)


def test_window_on_the_wrong_region():
    with pytest.raises(mmattn.Error, match="2-D window applies to an image's own keys"):
        layout = mmattn.Layout().add_text(3).add_image(2, 2)
        policy = mmattn.Policy().set(mmattn.SegmentKind.text, mmattn.SegmentKind.image, mmattn.Window2D.sliding(3, 3))
        mmattn.MultimodalAttention(layout, policy, num_heads=1, head_dim=4)


def test_empty_image():
    with pytest.raises(mmattn.Error, match="an image grid must be at least 1 x 1, got 0 x 3"):
        mmattn.Layout().add_image(0, 3)


@pytest.mark.parametrize("bad,message", [
    (lambda q: q.astype(np.float64), "q: dtype float64 is not supported"),
    (lambda q: q[:, :3], r"q: has 3 heads but num_heads is 4"),
    (lambda q: q[:10], r"q: has 10 tokens but the plan's query range holds 14"),
    (lambda q: q[::-1], "q: negative stride"),
    (lambda q: q.astype(">f4"), "q: dtype >f4 is not supported"),
    (lambda q: q.astype(np.int32), "q: dtype int32 is not supported"),
    (lambda q: q.reshape(14, 32), "q: expected a \\[tokens, heads, head_dim\\] array, got 2 dimensions"),
    (lambda q: torch.from_numpy(q), r"q: expected a numpy array .* t.numpy\(\)"),
    (lambda q: q.tolist(), "q: expected a numpy array"),
    (lambda q: np.frombuffer(np.zeros(14 * 4 * 8 * 4 + 1, np.uint8).tobytes(), np.float32, offset=1,
                             count=14 * 4 * 8).reshape(14, 4, 8), "q: data is not aligned"),
])
def test_bad_q(bad, message):
    _, attention = make()
    q, k, v = arrays()
    bad_q = bad(q)
    tokens = bad_q.shape[0] if isinstance(bad_q, np.ndarray) else 14
    out = np.full((tokens, 4, 8), 7.0, dtype=np.float32)  # right for q's tokens: q is the argument at fault
    with pytest.raises(mmattn.Error, match=message):
        attention.forward(bad_q, k, v, out=out)
    assert (out == 7.0).all()  # nothing written


def test_strides_that_are_not_whole_elements():
    _, attention = make()
    q, k, v = arrays()
    raw = np.zeros(14 * 4 * 8 * 4 * 2, dtype=np.uint8)
    odd = np.lib.stride_tricks.as_strided(raw.view(np.float32), shape=(14, 4, 8), strides=(4 * 8 * 4 + 2, 32, 4))
    with pytest.raises(mmattn.Error, match="is not a whole number of 4-byte elements"):
        attention.forward(odd, k, v)


def test_outputs():
    _, attention = make()
    q, k, v = arrays()
    with pytest.raises(mmattn.Error, match="out: overlaps q"):
        attention.forward(q, k, v, out=q)
    frozen = np.zeros_like(q)
    frozen.setflags(write=False)
    with pytest.raises(mmattn.Error, match="out: the array is read-only"):
        attention.forward(q, k, v, out=frozen)
    every_token_one_row = np.lib.stride_tricks.as_strided(np.zeros(32, np.float32), shape=(14, 4, 8),
                                                          strides=(0, 32, 4))
    with pytest.raises(mmattn.Error, match="out: strides make elements overlap"):
        attention.forward(q, k, v, out=every_token_one_row)


def test_element_mix_not_compiled():
    _, attention = make()
    q, k, v = arrays()
    with pytest.raises(mmattn.Error, match="not a mix the bindings compile"):
        attention.forward(q, k.astype(np.float16), v)  # f16 K with f32 V


def test_k_shape():
    _, attention = make()
    q, k, v = arrays()
    with pytest.raises(mmattn.Error, match=r"k: has 3 heads but num_kv_heads is 2"):
        attention.forward(q, np.zeros((14, 3, 8), np.float32), v)


def test_decode_errors():
    layout = mmattn.Layout().add_image(3, 3).add_text(5)
    policy = mmattn.Policy.structured(mmattn.Window2D.sliding(3, 3))
    q, k, v = arrays()
    with pytest.raises(mmattn.Error, match="k: the cache holds 10 tokens but the layout holds 14"):
        mmattn.decode(layout, policy, q[-1:], k[:10], v[:10])
    pool = np.zeros((4, 4, 2, 8), np.float32)
    with pytest.raises(mmattn.Error, match=r"block_table\[1\] = 9 is outside the pool's 4 blocks"):
        mmattn.decode(layout, policy, q[-1:], pool, pool, block_table=np.array([0, 9, 1, 2], np.int32))
    with pytest.raises(mmattn.Error, match="block_table: expected a 1-D numpy int32 array"):
        mmattn.decode(layout, policy, q[-1:], pool, pool, block_table=np.array([0, 1, 2, 3], np.int64))
    with pytest.raises(mmattn.Error, match="14 tokens need 4 blocks of 4 but the block table holds 3"):
        mmattn.decode(layout, policy, q[-1:], pool, pool, block_table=np.array([0, 1, 2], np.int32))
