#pragma once

#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace ddpm {

/// Enables autocast for one device type in a scope and restores the previous
/// state on exit: torch.autocast as a C++ guard. With `enabled` false it
/// does nothing, so callers can make mixed precision a runtime option.
class AutocastScope {
 public:
  AutocastScope(bool enabled, c10::DeviceType device, c10::ScalarType dtype)
      : enabled_(enabled), device_(device) {
    if (!enabled_) {
      return;
    }
    previous_enabled_ = at::autocast::is_autocast_enabled(device_);
    previous_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, dtype);
    at::autocast::increment_nesting();
  }

  ~AutocastScope() {
    if (!enabled_) {
      return;
    }
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_, previous_enabled_);
    at::autocast::set_autocast_dtype(device_, previous_dtype_);
  }

  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  c10::DeviceType device_;
  bool previous_enabled_ = false;
  c10::ScalarType previous_dtype_ = c10::kBFloat16;
};

} // namespace ddpm
