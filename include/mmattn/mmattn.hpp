#pragma once
// Umbrella header: the public API, nothing else.

#include "mmattn/attention_config.hpp"
#include "mmattn/config.hpp"
#include "mmattn/decode.hpp"
#include "mmattn/executor.hpp"
#include "mmattn/flash_attention.hpp"
#include "mmattn/layout.hpp"
#include "mmattn/merge.hpp"
#include "mmattn/multimodal_attention.hpp"
#include "mmattn/paged_kv.hpp"
#include "mmattn/plan_report.hpp"
#include "mmattn/plan_stats.hpp"
#include "mmattn/planner.hpp"
#include "mmattn/policy.hpp"
#include "mmattn/reference.hpp"
#include "mmattn/tensor_view.hpp"
