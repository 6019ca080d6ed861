// SHA-256 (FIPS 180-4), self-contained: the bundle check at open must not depend on a system crypto library
// (the wheel-only CI image has none). Checked against Python's hashlib in tests/runtime/test_cpp.py.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace ddit {

class Sha256 {
 public:
  Sha256();
  void update(const uint8_t* data, size_t n);
  std::string hex();  // finishes; the object is spent afterwards

 private:
  void block(const uint8_t* p);
  bool ni_;  // the x86 SHA extensions (unless DDIT_SHA256_PORTABLE=1)
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t fill_ = 0;
  uint64_t bytes_ = 0;
};

// The lowercase hex sha256 of a file, hashed in chunks over a read-only mapping of it.
std::string sha256_file(const std::string& path);

}  // namespace ddit
