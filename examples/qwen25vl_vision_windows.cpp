// A Qwen2.5-VL vision-encoder layer pair on one non-square image: a window layer (partitioned
// 8 x 8 patch windows, edge windows smaller) next to a full-attention layer, same input.

#include <cstdio>

#include "example_util.hpp"

int main(int argc, char** argv) try {
  using namespace mmattn;
  const example::Args args = example::parse(
      argc, argv,
      "A Qwen2.5-VL vision window layer (window x window patch partitions) beside a full-attention layer\n"
      "on one rows x cols image: plan report, both timed, window rows checked against the reference.",
      {{"rows", 36, 10}, {"cols", 52, 13}, {"heads", 16, 2}, {"head_dim", 80, 16}, {"window", 8, 8}});
  const bool smoke = args.smoke;
  const index_t rows = args.number[0], cols = args.number[1], heads = args.number[2], dim = args.number[3];
  const index_t window = args.number[4];

  SequenceLayout layout;
  layout.add_image(rows, cols);
  const AttentionConfig cfg{heads, heads, dim, {}};
  const MultimodalAttention<float> windowed(cfg, layout, RegionPolicy::qwen25vl_window(window));
  const MultimodalAttention<float> full(cfg, layout, RegionPolicy::dense());
  std::printf("%s\n", windowed.report().c_str());

  const index_t n = layout.size();
  const std::vector<float> q = example::random_values(size_t(n * heads * dim), 1);
  const std::vector<float> k = example::random_values(size_t(n * heads * dim), 2);
  const std::vector<float> v = example::random_values(size_t(n * heads * dim), 3);
  std::vector<float> out(q.size());
  const auto qv = view_thd(q.data(), n, heads, dim), kv = view_thd(k.data(), n, heads, dim),
             vv = view_thd(v.data(), n, heads, dim);
  const auto ov = view_thd(out.data(), n, heads, dim);

  const int runs = smoke ? 1 : 5;
  const double t_full = example::median_ms(runs, [&] { full.forward(qv, kv, vv, ov); });
  const double t_window = example::median_ms(runs, [&] { windowed.forward(qv, kv, vv, ov); });
  std::printf("full-attention layer   %9.2f ms (median of %d)\n", t_full, runs);
  std::printf("window layer           %9.2f ms  -> %.2fx faster\n", t_window, t_full / t_window);

  const std::vector<index_t> check{0, cols - 1, n / 2, n - cols, n - 1};
  const double err = example::check_rows(cfg, qv, kv, vv, ov, check, windowed.predicate());
  std::printf("max relative error vs reference on %zu rows: %.2e\n", check.size(), err);
  return err <= 1e-5 ? 0 : 1;
} catch (const std::exception& e) {
  return example::CommandLine::error(argv, e);
}
