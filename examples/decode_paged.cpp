// A chat turn against a paged bf16 KV cache: the prompt (two images, then text) prefilled in
// chunks, then new text tokens decoded one at a time; each new token sees every image and all
// earlier text (the structured rule). The last step is checked against the reference.
//
// Chunks are cut by safe_chunk_ends, where every key a chunk's queries may see is already in the
// cache: an image sees its window in both directions, so no cut falls inside an image; text is
// causal, so a chunk may end anywhere in it (after at most 64 tokens here). Decode grows the
// layout with extend_text and plans each step once (DecodeStep), as a runtime with many layers would.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "example_util.hpp"

int main(int argc, char** argv) try {
  using namespace mmattn;
  using bf16 = Eigen::bfloat16;
  const example::Args args = example::parse(
      argc, argv,
      "A chat turn over a paged bf16 KV cache: a prompt of two image_side x image_side images and text, prefilled in\n"
      "chunks, then decode steps of one token each; the last step is checked against the reference.",
      {{"image_side", 16, 4}, {"prompt_text", 256, 20}, {"decode_steps", 8, 3}, {"page_tokens", 16, 16}});
  const bool smoke = args.smoke;
  const index_t side = args.number[0], prompt_text = args.number[1], steps = args.number[2], page = args.number[3];
  const index_t heads = smoke ? 4 : 32, kv_heads = smoke ? 2 : 8, dim = smoke ? 32 : 128, chunk = 64;
  const AttentionConfig cfg{heads, kv_heads, dim, {}};
  const RegionPolicy policy = RegionPolicy::structured(Window2D::sliding(7, 7));
  auto layout_of = [&](index_t text) { return SequenceLayout::images_then_text(2, side, side, text); };

  // The cache: a pool of pages and a block table handing them out in shuffled order, as a serving
  // runtime's allocator would. K and V of position p stand in for the model's projections.
  const index_t capacity = layout_of(prompt_text + steps).size(), pages = (capacity + page - 1) / page;
  std::vector<bf16> k_pool(static_cast<size_t>(pages * page * kv_heads * dim));
  std::vector<bf16> v_pool(k_pool.size());
  std::vector<std::int32_t> table(static_cast<size_t>(pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(1));
  auto cache = [&](std::vector<bf16>& pool, index_t tokens) {
    return view_paged(pool.data(), pages, page, kv_heads, dim, table.data(), pages, tokens);
  };
  const std::vector<float> random = example::random_values(static_cast<size_t>(capacity * heads * dim), 7);
  auto write_kv = [&](index_t first, index_t last) {  // positions [first, last)
    for (index_t p = first; p < last; ++p)
      for (index_t h = 0; h < kv_heads; ++h)
        for (index_t d = 0; d < dim; ++d) {
          const float x = random[static_cast<size_t>((p * heads + h) * dim + d)];
          cache(k_pool, capacity)(p, h, d) = bf16(x);
          cache(v_pool, capacity)(p, h, d) = bf16(0.5f * x + 0.1f * float(h));
        }
  };
  auto q_rows = [&](index_t first, index_t count) {  // Q of positions [first, first + count)
    return view_thd(random.data() + first * heads * dim, count, heads, dim);
  };

  // Prefill in chunks of at most 64 tokens where the mask allows (no chunk ends inside an image).
  const SequenceLayout prompt = layout_of(prompt_text);
  std::vector<float> out(static_cast<size_t>(capacity * heads * dim));
  write_kv(0, prompt.size());
  const std::vector<index_t> chunk_ends = safe_chunk_ends(prompt, policy, chunk);
  index_t begin = 0;
  for (const index_t end : chunk_ends) {
    PlanOptions range;
    range.query_begin = begin, range.query_end = end;
    const MultimodalAttention<float> attention(cfg, prompt, policy, range);
    attention.forward(q_rows(begin, end - begin), cache(k_pool, prompt.size()), cache(v_pool, prompt.size()),
                      view_thd(out.data() + begin * heads * dim, end - begin, heads, dim));
    begin = end;
  }

  // Decode: one text token per step. extend_text lengthens the prompt's text segment (a segment
  // per token would make each step's plan grow with the tokens generated), and the step is
  // planned once, a DecodeStep every layer of the model would share (this example runs one). The
  // K/V views hold the written tokens only: the step reads keys [0, step.key_end()).
  SequenceLayout layout = prompt;
  double total_ms = 0;
  for (index_t s = 0; s < steps; ++s) {
    layout.extend_text(1);
    const index_t pos = layout.size() - 1;
    write_kv(pos, pos + 1);
    total_ms += example::median_ms(1, [&] {
      const DecodeStep step(layout, policy, /*new_tokens=*/1);
      decode_attention(cfg, step, q_rows(pos, 1), cache(k_pool, pos + 1), cache(v_pool, pos + 1),
                       view_thd(out.data() + pos * heads * dim, 1, heads, dim));
    });
  }

  // Check the last step: the reference over a contiguous copy of the cache.
  const SequenceLayout final_layout = layout_of(prompt_text + steps);
  const index_t n = final_layout.size();
  std::vector<float> k(static_cast<size_t>(n * kv_heads * dim)), v(k.size()), ref(static_cast<size_t>(heads * dim));
  const auto kc = view_thd(k.data(), n, kv_heads, dim), vc = view_thd(v.data(), n, kv_heads, dim);
  for (index_t p = 0; p < n; ++p)
    for (index_t h = 0; h < kv_heads; ++h)
      for (index_t d = 0; d < dim; ++d)
        kc(p, h, d) = float(cache(k_pool, n)(p, h, d)), vc(p, h, d) = float(cache(v_pool, n)(p, h, d));
  reference_attention(cfg, q_rows(n - 1, 1), TensorView<const float>(kc), TensorView<const float>(vc),
                      view_thd(ref.data(), 1, heads, dim), {}, MaskPredicate{&final_layout, &policy}, n - 1);
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < ref.size(); ++i) {
    err = std::max(err, double(std::abs(out[static_cast<size_t>((n - 1) * heads * dim) + i] - ref[i])));
    scale = std::max(scale, double(std::abs(ref[i])));
  }
  std::printf("prompt %lld tokens (2 images %lldx%lld + %lld text) prefilled in %zu chunk%s, %lld decode steps over "
              "%lld-token pages: %.3f ms per step; last step vs reference %.1e\n",
              static_cast<long long>(prompt.size()), static_cast<long long>(side), static_cast<long long>(side),
              static_cast<long long>(prompt_text), chunk_ends.size(), chunk_ends.size() == 1 ? "" : "s",
              static_cast<long long>(steps), static_cast<long long>(page), total_ms / double(steps), err / scale);
  return err / scale < 1e-5 ? 0 : 1;
} catch (const std::exception& e) {
  return example::CommandLine::error(argv, e);
}
