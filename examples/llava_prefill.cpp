// LLaVA-1.5 prefill: images of 24 x 24 patches (576 tokens) followed by a text prompt, 32 heads of
// 128. Plans the structured rule once, prints its report, writes its block map, times the forward
// against the library's dense causal forward, and checks rows against the reference.

#include <cstdio>
#include <fstream>
#include <stdexcept>

#include "example_util.hpp"

int main(int argc, char** argv) try {
  using namespace mmattn;
  const example::Args args = example::parse(
      argc, argv,
      "LLaVA-1.5 prefill: images of 24 x 24 patches (6 x 6 with --smoke), then text. Prints the structured\n"
      "rule's plan, writes its block map to llava_prefill_plan.svg, times it against dense causal and checks\n"
      "rows against the reference. The window is the image's 2-D sliding window (odd).",
      {{"images", 2, 2}, {"text_tokens", 512, 40}, {"heads", 32, 4}, {"head_dim", 128, 32}, {"window", 7, 7}});
  const bool smoke = args.smoke;
  const index_t images = args.number[0], text = args.number[1], heads = args.number[2], dim = args.number[3];
  const index_t window = args.number[4], grid = smoke ? 6 : 24;

  const SequenceLayout layout = SequenceLayout::images_then_text(images, grid, grid, text);
  const AttentionConfig cfg{heads, heads, dim, {}};
  const MultimodalAttention<float> structured(cfg, layout, RegionPolicy::structured(Window2D::sliding(window, window)));
  const MultimodalAttention<float> causal(cfg, layout, RegionPolicy::decoder_causal());
  std::printf("%s\n", structured.report().c_str());
  if (!(std::ofstream("llava_prefill_plan.svg") << structured.svg()))
    throw std::runtime_error("cannot write llava_prefill_plan.svg");
  std::printf("block map written to llava_prefill_plan.svg\n\n");

  const index_t n = layout.size();
  const std::vector<float> q = example::random_values(size_t(n * heads * dim), 1);
  const std::vector<float> k = example::random_values(size_t(n * heads * dim), 2);
  const std::vector<float> v = example::random_values(size_t(n * heads * dim), 3);
  std::vector<float> out(q.size()), out_causal(q.size());
  const auto qv = view_thd(q.data(), n, heads, dim), kv = view_thd(k.data(), n, heads, dim),
             vv = view_thd(v.data(), n, heads, dim);

  const int runs = smoke ? 1 : 5;
  const double t_causal = example::median_ms(runs, [&] { causal.forward(qv, kv, vv, view_thd(out_causal.data(), n, heads, dim)); });
  const double t_structured = example::median_ms(runs, [&] { structured.forward(qv, kv, vv, view_thd(out.data(), n, heads, dim)); });
  std::printf("kernel path: %s (chosen at run time from this CPU; MMATTN_ISA=eigen|avx2|avx512 forces one)\n",
              isa_name(active_isa()));
  std::printf("dense causal forward  %9.2f ms (median of %d)\n", t_causal, runs);
  std::printf("structured forward    %9.2f ms  -> %.2fx faster\n", t_structured, t_causal / t_structured);

  // First and last patch of each image, and text rows: each checked against the reference.
  std::vector<index_t> rows;
  for (const Segment& s : layout.segments()) rows.insert(rows.end(), {s.start, s.start + s.length / 2, s.end() - 1});
  const double err = example::check_rows(cfg, qv, kv, vv, view_thd(out.data(), n, heads, dim), rows, structured.predicate());
  std::printf("max relative error vs reference on %zu rows: %.2e\n", rows.size(), err);
  return err <= 1e-5 ? 0 : 1;
} catch (const std::exception& e) {
  return example::CommandLine::error(argv, e);
}
