#pragma once
// The list of mask rules. A new rule is one header under mask/ (a struct with name(),
// check(query_segment, key_segment) and keys(query_segment, key_segment, q) -> KeySet) and one
// entry in RuleVariant below; the planner, the kernel's masking, the statistics and the report
// then handle it through KeySet arithmetic (key_set.hpp) without further changes. Two optional
// conveniences name rules: Rule::and_causal() (a rule's causal form) and the planner's automatic
// image tiling, which tries 2-D patches for Window2D / Window3D only.

#include <variant>

#include "mmattn/mask/causal.hpp"
#include "mmattn/mask/chunked.hpp"
#include "mmattn/mask/custom.hpp"
#include "mmattn/mask/dilated_band.hpp"
#include "mmattn/mask/full.hpp"
#include "mmattn/mask/none.hpp"
#include "mmattn/mask/sliding_window.hpp"
#include "mmattn/mask/window2d.hpp"
#include "mmattn/mask/window3d.hpp"

namespace mmattn {

using RuleVariant = std::variant<NoneRule, FullRule, CausalRule, SlidingWindowRule, ChunkedRule, Window2D, Window3D,
                                 DilatedBandRule, SharedCustomRule>;

}  // namespace mmattn
