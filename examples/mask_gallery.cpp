// The masks of the models the presets stand for, drawn: for each preset a small layout of the
// model's shape (windows and chunks scaled down with it), its plan's block map with the allowed
// pairs on top (docs/masks/*.svg in the README), and a forward checked against the reference.

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>

#include "example_util.hpp"

namespace {

struct Entry {
  const char* file;  // SVG name
  const char* model;
  mmattn::SequenceLayout layout;
  mmattn::RegionPolicy policy;
};

}  // namespace

int main(int argc, char** argv) try {
  using namespace mmattn;
  const example::Args args = example::parse(
      argc, argv,
      "Every model preset on a small layout of its shape: one line of plan statistics each, its block map\n"
      "with the allowed pairs as out_dir/<preset>.svg, and a forward checked against the reference.",
      {{"out_dir", 0, 0, 0, /*text=*/"."}});
  const bool smoke = args.smoke;
  const std::string dir = args.text[0];

  SequenceLayout chat;  // a system prompt, an image, the question
  chat.add_text(16).add_image(10, 10).add_text(60);
  SequenceLayout two_images;
  two_images.add_image(8, 8).add_image(6, 10);
  SequenceLayout clip;
  clip.add_text(12).add_video(4, 6, 6).add_text(40);
  SequenceLayout long_chat;
  long_chat.add_text(40).add_image(8, 8).add_text(80);

  const Entry entries[] = {
      {"llava_causal", "LLaVA-1.5 / NeXT language model", chat, RegionPolicy::decoder_causal()},
      {"gemma3_global", "Gemma-3 global layers", chat, RegionPolicy::gemma3_global()},
      {"gemma3_local", "Gemma-3 local layers (window 1024, drawn as 32)", chat, RegionPolicy::gemma3_local(32)},
      {"llama4_chunked", "Llama-4 chunked local layers (chunk 8192, drawn as 64)", long_chat,
       RegionPolicy::llama4_chunked(64)},
      {"qwen25vl_window", "Qwen2.5-VL vision window layers (8 x 8, drawn as 4 x 4)", two_images,
       RegionPolicy::qwen25vl_window(4)},
      {"vision_block_diagonal", "Pixtral / ViT / Qwen2.5-VL full vision layers", two_images,
       RegionPolicy::vision_block_diagonal()},
      {"video_windows", "Video LM, 3-D window 3 x 5 x 5 causal in time", clip,
       RegionPolicy::video_windows(Window3D::sliding(3, 5, 5).causal_in_time())},
      {"structured", "mmattn structured (image 2-D window, text causal)", chat,
       RegionPolicy::structured(Window2D::sliding(5, 5))},
      {"streaming_sinks", "StreamingLLM: 4 sinks + causal band of 24", long_chat,
       RegionPolicy::sliding_causal(24).with_sinks(4)},
  };

  const AttentionConfig cfg{2, 1, smoke ? 8 : 32, {}};
  double worst = 0;
  for (const Entry& e : entries) {
    const MultimodalAttention<float> attention(cfg, e.layout, e.policy, PlanOptions{{16, 16}});
    const std::string path = dir + "/" + e.file + ".svg";
    if (!(std::ofstream(path) << attention.svg())) throw std::runtime_error("cannot write " + path);
    const PlanStats st = attention.stats();
    const index_t n = e.layout.size();
    const std::vector<float> q = example::random_values(size_t(n * 2 * cfg.head_dim), 1);
    const std::vector<float> kv = example::random_values(size_t(n * cfg.head_dim), 2);
    std::vector<float> out(q.size());
    const auto qv = view_thd(q.data(), n, 2, cfg.head_dim), kvv = view_thd(kv.data(), n, 1, cfg.head_dim);
    const auto ov = view_thd(out.data(), n, 2, cfg.head_dim);
    attention.forward(qv, kvv, kvv, ov);
    const std::vector<index_t> rows{0, n / 3, n / 2, n - 1};
    const double err = example::check_rows(cfg, qv, kvv, kvv, ov, rows, attention.predicate());
    worst = std::isnan(err) ? err : std::max(worst, err);
    std::printf("%-22s %-55s %4lld tokens, %5.1f%% of pairs allowed, efficiency %5.1f%%, err %.1e -> %s\n", e.file,
                e.model, static_cast<long long>(n), 100.0 * st.density(), 100.0 * st.efficiency(), err, path.c_str());
  }
  return worst <= 1e-5 ? 0 : 1;  // NaN fails
} catch (const std::exception& e) {
  return example::CommandLine::error(argv, e);
}
