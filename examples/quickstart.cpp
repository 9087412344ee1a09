// The smallest use: two images and a prompt, the structured rule, one forward, checked.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "example_util.hpp"  // only for the command line: --help, --smoke

int main(int argc, char** argv) try {
  using namespace mmattn;
  example::parse(argc, argv,
                 "The smallest use: an interleaved prompt of two images and text, the structured rule, one\n"
                 "forward checked against the reference. Takes no sizes: it is tiny already, so --smoke is\n"
                 "the same run.",
                 {});
  SequenceLayout layout;
  layout.add_image(12, 12).add_text(20).add_image(8, 10).add_text(30);  // interleaved chat prompt
  const AttentionConfig cfg{/*num_heads=*/8, /*num_kv_heads=*/2, /*head_dim=*/64, /*scale=*/{}};
  const MultimodalAttention<float> attention(cfg, layout, RegionPolicy::structured(Window2D::sliding(5, 5)));

  const index_t n = layout.size();
  std::vector<float> q(n * 8 * 64, 0.01f), k(n * 2 * 64, 0.02f), v(n * 2 * 64, 1.0f), out(n * 8 * 64);
  for (size_t i = 0; i < q.size(); ++i) q[i] *= float(i % 7);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i % 5);
  attention.forward(view_thd(q.data(), n, 8, 64), view_thd(k.data(), n, 2, 64), view_thd(v.data(), n, 2, 64),
                    view_thd(out.data(), n, 8, 64));

  std::vector<float> ref(out.size());
  reference_attention(cfg, view_thd(q.data(), n, 8, 64), view_thd(k.data(), n, 2, 64), view_thd(v.data(), n, 2, 64),
                      view_thd(ref.data(), n, 8, 64), {}, attention.predicate());
  float err = 0;
  for (size_t i = 0; i < out.size(); ++i) err = std::max(err, std::abs(out[i] - ref[i]));
  std::printf("%lld tokens, plan efficiency %.2f, max |out - reference| = %.1e\n", static_cast<long long>(n),
              attention.stats().efficiency(), err);
  return err < 1e-4f ? 0 : 1;
} catch (const std::exception& e) {
  return example::CommandLine::error(argv, e);
}
