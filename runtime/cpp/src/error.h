// Internal errors: thrown inside the library, turned into a ddit_status + message at the C API boundary.
#pragma once
#include <stdexcept>
#include <string>

#include "ddit/ddit.h"

namespace ddit {

class Error : public std::runtime_error {
 public:
  Error(ddit_status code, const std::string& msg) : std::runtime_error(msg), code(code) {}
  ddit_status code;
};

inline Error argument_error(const std::string& m) { return Error(DDIT_ERR_ARGUMENT, m); }
inline Error bundle_error(const std::string& m) { return Error(DDIT_ERR_BUNDLE, m); }

}  // namespace ddit
