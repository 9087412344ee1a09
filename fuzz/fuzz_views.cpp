// libFuzzer target: random shapes, strides and configs for Q, K, V, O and the LSE into
// flash_attention. Each view lives in its own allocation sized exactly to the extent its strides
// give, so AddressSanitizer catches any element read or written outside it. Either mmattn::Error
// before anything is written, or a run that stays inside every view. Never a crash or UB.

#include <cstdint>
#include <vector>

#include "fuzz_input.hpp"
#include "mmattn/flash_attention.hpp"

namespace {

using namespace mmattn;

struct Owned {
  std::vector<float> storage;
  TensorView<float> view;
};

// A view of random shape and strides, or none when its extent would not fit a small allocation.
bool make_view(fuzz::Input& in, index_t heads, index_t dim, Owned& o) {
  const index_t tokens = in.in(0, 9);
  const index_t strides[3] = {in.in(-1, 80), in.in(-1, 40), in.in(-1, 3)};
  o.view = {nullptr, tokens, in.flip() ? heads : in.in(0, 4), in.flip() ? dim : in.in(0, 9),
            strides[0], strides[1], strides[2]};
  index_t last = 0;
  const index_t extents[3] = {o.view.tokens, o.view.heads, o.view.head_dim};
  for (int i = 0; i < 3; ++i) {
    if (extents[i] == 0) return true;  // empty: no data needed, null is fine
    if (strides[i] < 0) return true;   // refused by validation before any access
    last += (extents[i] - 1) * strides[i];
  }
  if (last > 100000) return false;
  o.storage.assign(static_cast<std::size_t>(last + 1), 0.25f);
  o.view.data = o.storage.data();
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const index_t heads = in.in(0, 4), kv_heads = in.in(0, 4), dim = in.in(0, 9);
  AttentionConfig cfg{heads, kv_heads, dim, {}};
  if (in.flip()) cfg.scale = static_cast<float>(in.in(-3, 3));
  Owned q, k, v, o;
  if (!make_view(in, heads, dim, q) || !make_view(in, kv_heads, dim, k) || !make_view(in, kv_heads, dim, v) ||
      !make_view(in, heads, dim, o))
    return 0;
  if (in.flip()) {  // v shaped like k, in its own allocation: the common, accepted case
    v.storage = k.storage;
    v.view = k.view;
    v.view.data = k.view.data ? v.storage.data() : nullptr;
  }
  std::vector<float> lse_storage(static_cast<std::size_t>(std::max<index_t>(q.view.tokens * heads, 1)));
  const LseView lse = in.flip() ? LseView{lse_storage.data(), q.view.tokens, heads, heads, 1} : LseView{};
  GlobalOptions options;
  options.causal = in.flip();
  options.query_offset = in.in(0, 12);
  try {
    flash_attention(cfg, TensorView<const float>(q.view), TensorView<const float>(k.view),
                    TensorView<const float>(v.view), o.view, lse, options, Executor::serial());
  } catch (const Error&) {
  }
  return 0;
}
