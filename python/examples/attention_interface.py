"""Route a transformers-style multimodal layer's attention to mmattn.

transformers lets a model's attention layers call any function with the signature of its attention
interface hook,

    fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs)
        -> (attn_output [batch, q_len, heads, head_dim], attn_weights or None)

with query [batch, heads, q_len, head_dim] and key/value [batch, kv_heads, kv_len, head_dim]. With
transformers installed, `AttentionInterface.register("mmattn", mmattn_attention)` and
`attn_implementation="mmattn"` route a model's layers to the function below. transformers is not a
Debian package, so this example writes the hook's signature standalone and calls it from a tiny
decoder built here (no downloads): random weights, a config made in code, and a Gemma-3-style mask
(causal, bidirectional inside each image, from token_type_ids) that the eager path builds densely
as transformers does, and that mmattn plans from the layout with `Policy.gemma3_global()` instead.

The hook gives mmattn the query, key and value in place: `query[0].transpose(0, 1)` is a
[tokens, heads, head_dim] view of the [heads, tokens, head_dim] tensor, and `.numpy()` passes its
strides through, so nothing is copied. The model's dense 4-D mask is ignored on the mmattn path:
the layout and policy are the mask, planned once per layout and shared by every layer.

    attention_interface.py [--images N] [--grid G] [--text T] [--layers L] [--smoke]
"""

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn

import mmattn


# ---- The two attention functions a layer may be routed to ----

def repeat_kv(x, groups):
    """[batch, kv_heads, tokens, dim] -> [batch, kv_heads * groups, tokens, dim], as transformers does."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager path: softmax(q k^T * scaling + mask) v over the dense additive mask."""
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = query @ key.transpose(2, 3) * scaling + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return (weights @ value).transpose(1, 2).contiguous(), weights


_plans = {}


def mmattn_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, *, mmattn_layout=None,
                     mmattn_policy=None, **kwargs):
    """The hook for mmattn: exact attention under the layout's policy, no dense mask. One sequence
    per batch row needs its own layout; this example runs batch 1."""
    if dropout != 0.0:
        raise ValueError("mmattn is an inference kernel: dropout must be 0")
    if query.shape[0] != 1:
        raise ValueError("this hook runs one sequence (batch 1); loop over rows with a layout each")
    batch, heads, tokens, head_dim = query.shape
    kv_heads = key.shape[1]
    key_plan = (id(mmattn_layout), id(mmattn_policy), heads, kv_heads, head_dim, scaling)
    if key_plan not in _plans:  # plan once per layout; every layer reuses it
        _plans[key_plan] = mmattn.MultimodalAttention(mmattn_layout, mmattn_policy, num_heads=heads,
                                                      num_kv_heads=kv_heads, head_dim=head_dim, scale=scaling)
    attention = _plans[key_plan]
    out = torch.empty(batch, tokens, heads, head_dim, dtype=query.dtype)
    with torch.no_grad():
        attention.forward(query[0].transpose(0, 1).numpy(), key[0].transpose(0, 1).numpy(),
                          value[0].transpose(0, 1).numpy(), out=out[0].numpy())
    return out, None


ATTENTION_FUNCTIONS = {"eager": eager_attention, "mmattn": mmattn_attention}


# ---- A tiny decoder with the shape of a multimodal language model's layers ----

class TinyConfig:
    vocab_size = 97
    hidden_size = 64
    num_attention_heads = 4
    num_key_value_heads = 2
    head_dim = 16
    intermediate_size = 128
    num_hidden_layers = 2
    rms_norm_eps = 1e-6
    attn_implementation = "eager"


class RMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config, self.head_dim = config, config.head_dim
        self.scaling = config.head_dim ** -0.5
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * config.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * config.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * config.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden, attention_mask, **kwargs):
        batch, tokens, _ = hidden.shape
        shape = (batch, tokens, -1, self.head_dim)
        query = self.q_proj(hidden).view(shape).transpose(1, 2)  # [batch, heads, tokens, head_dim]
        key = self.k_proj(hidden).view(shape).transpose(1, 2)
        value = self.v_proj(hidden).view(shape).transpose(1, 2)
        attend = ATTENTION_FUNCTIONS[self.config.attn_implementation]
        out, _ = attend(self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0, **kwargs)
        return self.o_proj(out.reshape(batch, tokens, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.post_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(config.hidden_size, config.intermediate_size), nn.GELU(),
                                 nn.Linear(config.intermediate_size, config.hidden_size))

    def forward(self, hidden, attention_mask, **kwargs):
        hidden = hidden + self.attn(self.input_norm(hidden), attention_mask, **kwargs)
        return hidden + self.mlp(self.post_norm(hidden))


class TinyMultimodalLM(nn.Module):
    """Text tokens are embedded; image patches arrive as vectors (a vision tower's output)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, inputs_embeds, attention_mask, **kwargs):
        hidden = inputs_embeds
        for layer in self.layers:
            hidden = layer(hidden, attention_mask, **kwargs)
        return hidden


def gemma3_mask(token_type_ids, image_ids):
    """The dense additive mask as transformers builds it for Gemma-3's global layers: causal, OR the
    query and key in the same image (token_type_ids == 1 and the same image group)."""
    n = token_type_ids.shape[0]
    pos = torch.arange(n)
    causal = pos[None, :] <= pos[:, None]
    same_image = (token_type_ids[:, None] == 1) & (token_type_ids[None, :] == 1) & \
        (image_ids[:, None] == image_ids[None, :])
    allowed = causal | same_image
    mask = torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="images in the prompt (default 2)")
    parser.add_argument("--grid", type=int, default=16, help="patches per image side (default 16)")
    parser.add_argument("--text", type=int, default=64, help="text tokens after each image (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.grid, args.text = 2, 5, 7
    if min(args.images, args.grid, args.text, args.layers) < 1:
        parser.error("every size must be >= 1")

    torch.manual_seed(0)
    config = TinyConfig()
    config.num_hidden_layers = args.layers
    model = TinyMultimodalLM(config).eval()

    # An interleaved prompt: text, then per image its patches and text about it.
    layout = mmattn.Layout().add_text(4)
    types, groups = [0] * 4, [-1] * 4
    for i in range(args.images):
        layout.add_image(args.grid, args.grid).add_text(args.text)
        types += [1] * args.grid ** 2 + [0] * args.text
        groups += [i] * args.grid ** 2 + [-1] * args.text
    n = len(layout)
    token_type_ids, image_ids = torch.tensor(types), torch.tensor(groups)
    policy = mmattn.Policy.gemma3_global()
    ids = torch.randint(0, config.vocab_size, (n,))
    embeds = torch.where(token_type_ids[:, None] == 1, torch.randn(n, config.hidden_size), model.embed(ids))[None]

    with torch.no_grad():
        config.attn_implementation = "eager"
        t0 = time.perf_counter()
        eager = model(embeds, gemma3_mask(token_type_ids, image_ids))
        t_eager = time.perf_counter() - t0
        config.attn_implementation = "mmattn"
        t0 = time.perf_counter()
        routed = model(embeds, None, mmattn_layout=layout, mmattn_policy=policy)
        t_mmattn = time.perf_counter() - t0

    err = float((routed - eager).abs().max() / eager.abs().max())
    print(f"tiny multimodal LM: {args.layers} layers, {config.num_attention_heads} heads "
          f"({config.num_key_value_heads} KV) of {config.head_dim}; {n} tokens ({args.images} images of "
          f"{args.grid} x {args.grid})")
    print(f"eager (dense mask) {t_eager * 1e3:.1f} ms, mmattn {t_mmattn * 1e3:.1f} ms: one call each, not a "
          f"measurement (python/bench/bench_binding.py measures)")
    print(f"max relative difference of the final hidden states: {err:.2e}")
    if not err <= 1e-5:  # NaN fails too
        print("FAILED: the mmattn route differs from the eager path", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
