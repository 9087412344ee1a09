// The strategy advisor on real or synthetic Q, K, V: recommends a strategy by the checklist and
// prints every candidate's plan statistics, latency, speedups, memory and measured error.
// `strategy_advisor --help` lists the flags and their defaults.
//
// Inputs: --q/--k/--v read .npy files of shape [tokens, heads, head_dim] ('<f4', C order; a
// runtime dumps them with numpy.save), and the layout flags must describe their tokens (images of
// the grid first, then the text). Without them the inputs are synthetic with tunable locality:
// every image's Q, K and V are smooth 2-D random fields over its grid (bilinear over a lattice of
// 4-patch cells, unit variance) mixed with noise, sqrt(locality) field + sqrt(1 - locality) noise,
// so nearby patches correlate as in real vision tokens. Text K and V are noise; a text query of
// head h is noise plus focus x (h + 1/2) / heads x sqrt(head_dim) times the unit direction of the
// mean key over a "referent" region (4 x 4 patches of a random image, a new one every 16 text
// tokens): text refers to image content, and heads range from diffuse to peaked cross attention.
// --smoke goes through .npy files in a temporary directory, so the loader runs too.

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "example_util.hpp"

namespace {

using mmattn::index_t;

struct Args {
  index_t images = 32, rows = 16, cols = 16, text = 512, heads = 32, kv_heads = 0, head_dim = 128;
  double locality = 0.8, focus = 1.0, budget_mib = 0;
  index_t kv_bytes = 2, top_k = 1, tile_rows = 8, tile_cols = 8;
  int runs = 3, threads = 0;
  std::string q, k, v, save;
  bool smoke = false;
};

const char* const kUsage =
    "[--images 32] [--grid 16x16] [--text 512] [--heads 32] [--kv-heads (heads)] [--head-dim 128]\n"
    "    [--locality 0.8] [--focus 1] [--budget-mib (none)] [--kv-bytes 2] [--top-k 1] [--tile 8x8] [--runs 3]\n"
    "    [--threads (all)] [--q q.npy --k k.npy --v v.npy] [--save DIR] [--smoke] [--help]";
const char* const kAbout =
    "Recommends an attention strategy for a layout of images (grid) then text, and prints every candidate's\n"
    "plan statistics, latency, speedup, memory and measured error, on .npy inputs (--q/--k/--v, shape\n"
    "[tokens, heads, head_dim], '<f4') or synthetic ones of tunable image locality and text focus.\n"
    "--save DIR writes the inputs as DIR/{q,k,v}.npy. --smoke: 3 images of 6 x 6 + 20 text, 2 heads of 16.";

// "RxC", or one number for both.
void parse_pair(const example::CommandLine& cli, const std::string& name, const std::string& s, index_t& a,
                index_t& b) {
  const size_t x = s.find('x');
  a = cli.whole(name, s.substr(0, x).c_str(), 1);
  b = x == std::string::npos ? a : cli.whole(name, s.substr(x + 1).c_str(), 1);
}

Args parse(int argc, char** argv) {
  constexpr double kHuge = 1e30;  // "no upper bound" for a real-valued flag
  const example::CommandLine cli(argv, kUsage, kAbout);
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) cli.fail(s + " needs a value");
      return argv[++i];
    };
    auto whole = [&](long min, long max = LONG_MAX) { return cli.whole(s, value(), min, max); };
    auto real = [&](double lo, double hi) { return cli.real(s, value(), lo, hi); };
    if (s == "--help" || s == "-h") cli.help();
    else if (s == "--smoke") a.smoke = true;
    else if (s == "--images") a.images = whole(0);
    else if (s == "--grid") parse_pair(cli, s, value(), a.rows, a.cols);
    else if (s == "--text") a.text = whole(0);
    else if (s == "--heads") a.heads = whole(1);
    else if (s == "--kv-heads") a.kv_heads = whole(1);
    else if (s == "--head-dim") a.head_dim = whole(1);
    else if (s == "--locality") a.locality = real(0, 1);
    else if (s == "--focus") a.focus = real(0, kHuge);
    else if (s == "--budget-mib") a.budget_mib = real(0, kHuge);
    else if (s == "--kv-bytes") a.kv_bytes = whole(1);
    else if (s == "--top-k") a.top_k = whole(1);
    else if (s == "--tile") parse_pair(cli, s, value(), a.tile_rows, a.tile_cols);
    else if (s == "--runs") a.runs = static_cast<int>(whole(1, INT_MAX));
    else if (s == "--threads") a.threads = static_cast<int>(whole(0, INT_MAX));
    else if (s == "--q") a.q = value();
    else if (s == "--k") a.k = value();
    else if (s == "--v") a.v = value();
    else if (s == "--save") a.save = value();
    else if (s[0] == '-') cli.fail("unknown option '" + s + "'");
    else cli.fail("unexpected argument '" + s + "' (every setting is a --flag)");
  }
  if (a.smoke) a.images = 3, a.rows = a.cols = 6, a.text = 20, a.heads = 2, a.kv_heads = 0, a.head_dim = 16, a.runs = 1;
  if (a.smoke) a.tile_rows = a.tile_cols = 3;
  if (a.kv_heads <= 0) a.kv_heads = a.heads;
  if (a.q.empty() != a.k.empty() || a.q.empty() != a.v.empty()) cli.fail("--q, --k and --v go together");
  return a;
}

// [tokens, heads, dim] contiguous.
struct Inputs {
  index_t tokens = 0, heads = 0, kv_heads = 0, dim = 0;
  std::vector<float> q, k, v;
};

// One smooth unit-variance random field over a rows x cols grid: bilinear interpolation of iid
// normals on a lattice of `cell`-patch cells, divided by the interpolation weights' norm.
void smooth_field(std::mt19937& gen, index_t rows, index_t cols, index_t cell, std::vector<float>& out) {
  std::normal_distribution<float> normal;
  const index_t lr = rows / cell + 2, lc = cols / cell + 2;
  std::vector<float> lattice(static_cast<size_t>(lr * lc));
  for (float& x : lattice) x = normal(gen);
  out.resize(static_cast<size_t>(rows * cols));
  for (index_t r = 0; r < rows; ++r)
    for (index_t c = 0; c < cols; ++c) {
      const float y = float(r) / float(cell), x = float(c) / float(cell);
      const auto i = static_cast<index_t>(y), j = static_cast<index_t>(x);
      const float fy = y - float(i), fx = x - float(j);
      const float w[4] = {(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx};
      const float l[4] = {lattice[size_t(i * lc + j)], lattice[size_t(i * lc + j + 1)], lattice[size_t((i + 1) * lc + j)],
                          lattice[size_t((i + 1) * lc + j + 1)]};
      const float norm = std::sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2] + w[3] * w[3]);
      out[size_t(r * cols + c)] = (w[0] * l[0] + w[1] * l[1] + w[2] * l[2] + w[3] * l[3]) / norm;
    }
}

// The unit direction of the mean key (KV head kvh) over a random 4 x 4 region of `image`.
void referent_direction(const Inputs& x, const mmattn::Segment& image, index_t kvh, std::mt19937& gen,
                        std::vector<float>& direction) {
  const index_t r0 = std::uniform_int_distribution<index_t>(0, image.rows - 1)(gen);
  const index_t c0 = std::uniform_int_distribution<index_t>(0, image.cols - 1)(gen);
  std::fill(direction.begin(), direction.end(), 0.0f);
  for (index_t r = r0; r < std::min(r0 + 4, image.rows); ++r)
    for (index_t c = c0; c < std::min(c0 + 4, image.cols); ++c)
      for (index_t d = 0; d < x.dim; ++d)
        direction[size_t(d)] += x.k[size_t(((image.start + r * image.cols + c) * x.kv_heads + kvh) * x.dim + d)];
  float norm = 0;
  for (const float f : direction) norm += f * f;
  norm = std::sqrt(norm);
  for (float& f : direction) f = norm > 0 ? f / norm : 0.0f;
}

Inputs synthetic(const mmattn::SequenceLayout& layout, const Args& a) {
  Inputs x{layout.size(), a.heads, a.kv_heads, a.head_dim, {}, {}, {}};
  x.q.resize(static_cast<size_t>(x.tokens * x.heads * x.dim));
  x.k.resize(static_cast<size_t>(x.tokens * x.kv_heads * x.dim));
  x.v.resize(x.k.size());
  const float field_w = float(std::sqrt(a.locality)), noise_w = float(std::sqrt(1 - a.locality));
  // K and V first (text queries point at keys), then Q; one seed per (tensor, head), so the
  // inputs do not depend on the thread count.
  for (const int tensor : {1, 2, 0}) {
    const index_t heads = tensor == 0 ? x.heads : x.kv_heads;
    std::vector<float>& data = tensor == 0 ? x.q : tensor == 1 ? x.k : x.v;
    mmattn::Executor::default_executor().parallel_for(heads, [&](index_t h) {
      std::mt19937 gen(static_cast<unsigned>(1000 * tensor + h + 1));
      std::normal_distribution<float> normal;
      std::vector<float> field;
      for (const mmattn::Segment& s : layout.segments()) {
        if (!s.is_image()) continue;
        for (index_t d = 0; d < x.dim; ++d) {
          smooth_field(gen, s.rows, s.cols, 4, field);
          for (index_t p = 0; p < s.length; ++p)
            data[size_t(((s.start + p) * heads + h) * x.dim + d)] = field_w * field[size_t(p)] + noise_w * normal(gen);
        }
      }
      // Text: K and V noise; a query is noise plus focus_h * sqrt(dim) * the unit direction of the
      // mean key over a 4 x 4 "referent" region of a random image, a new region every 16 tokens.
      std::vector<const mmattn::Segment*> images;
      for (const mmattn::Segment& s : layout.segments())
        if (s.is_image()) images.push_back(&s);
      const float focus = float(a.focus * (double(h) + 0.5) / double(heads));
      const index_t kvh = h / (x.heads / x.kv_heads);
      std::vector<float> direction(static_cast<size_t>(x.dim), 0.0f);
      for (const mmattn::Segment& s : layout.segments()) {
        if (s.is_image()) continue;
        for (index_t t = s.start; t < s.end(); ++t) {
          if (tensor == 0 && (t - s.start) % 16 == 0 && !images.empty())
            referent_direction(x, *images[std::uniform_int_distribution<size_t>(0, images.size() - 1)(gen)], kvh, gen,
                               direction);
          for (index_t d = 0; d < x.dim; ++d) {
            float value = normal(gen);
            if (tensor == 0) value += focus * std::sqrt(float(x.dim)) * direction[size_t(d)];
            data[size_t((t * heads + h) * x.dim + d)] = value;
          }
        }
      }
    });
  }
  return x;
}

Inputs load(const mmattn::SequenceLayout& layout, const std::string& qp, const std::string& kp, const std::string& vp) {
  const mmattn::NpyArray q = mmattn::load_npy(qp, {layout.size(), -1, -1});
  const mmattn::NpyArray k = mmattn::load_npy(kp, {layout.size(), -1, q.shape[2]});
  const mmattn::NpyArray v = mmattn::load_npy(vp, k.shape);
  return {layout.size(), q.shape[1], k.shape[1], q.shape[2], q.data, k.data, v.data};
}

void save(const Inputs& x, const std::string& dir) {
  std::filesystem::create_directories(dir);
  mmattn::save_npy(dir + "/q.npy", {x.tokens, x.heads, x.dim}, x.q.data());
  mmattn::save_npy(dir + "/k.npy", {x.tokens, x.kv_heads, x.dim}, x.k.data());
  mmattn::save_npy(dir + "/v.npy", {x.tokens, x.kv_heads, x.dim}, x.v.data());
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  try {
    const mmattn::SequenceLayout layout = mmattn::SequenceLayout::images_then_text(a.images, a.rows, a.cols, a.text);
    Inputs x;
    std::string source;
    if (!a.q.empty()) {
      x = load(layout, a.q, a.k, a.v);
      source = "loaded from " + a.q + ", " + a.k + ", " + a.v;
    } else {
      x = synthetic(layout, a);
      char buf[160];
      std::snprintf(buf, sizeof buf, "synthetic: locality %.2f (smooth fields over 4-patch cells), focus %.2f", a.locality,
                    a.focus);
      source = buf;
      if (a.smoke && a.save.empty())
        a.save = (std::filesystem::temp_directory_path() / ("mmattn_advisor_smoke_" + std::to_string(::getpid()))).string();
      if (!a.save.empty()) {  // --smoke goes through the files, so the loader runs too
        save(x, a.save);
        x = load(layout, a.save + "/q.npy", a.save + "/k.npy", a.save + "/v.npy");
        source += ", through " + a.save + "/{q,k,v}.npy";
        if (a.smoke) std::filesystem::remove_all(a.save);
      }
    }
    const mmattn::AttentionConfig cfg{x.heads, x.kv_heads, x.dim, {}};
    mmattn::AdvisorOptions o;
    o.memory_budget_bytes = a.budget_mib * 1024 * 1024;
    o.kv_element_bytes = a.kv_bytes;
    o.sparse = {a.top_k, a.tile_rows, a.tile_cols};
    o.runs = a.runs;
    o.executor = mmattn::Executor::openmp(a.threads);
    std::printf("inputs: %s\n", source.c_str());
    const mmattn::Advice advice =
        mmattn::advise(layout, cfg, o, mmattn::view_thd<const float>(x.q.data(), x.tokens, x.heads, x.dim),
                       mmattn::view_thd<const float>(x.k.data(), x.tokens, x.kv_heads, x.dim),
                       mmattn::view_thd<const float>(x.v.data(), x.tokens, x.kv_heads, x.dim));
    std::printf("%s", advice.report.c_str());
    for (const mmattn::AdvisorRow& r : advice.rows)
      if (r.reference_error > 1e-4) return 1;  // an exact strategy that is not exact is a bug
    return 0;
  } catch (const std::exception& e) {
    return example::CommandLine::error(argv, e);
  }
}
