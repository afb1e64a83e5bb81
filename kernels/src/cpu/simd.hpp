// Helpers shared by the CPU kernels (internal to src/cpu).
#pragma once

#include <cstdint>
#include <cstring>

// Hot loops are compiled twice, for x86-64-v3 (AVX2, FMA, F16C) and for the baseline, and picked at load
// time, so one wheel runs everywhere and still vectorizes 8 floats wide where it can.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(PEREGRINE_NO_CLONES)
#define PEREGRINE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define PEREGRINE_CLONES_ACTIVE 1
#else
#define PEREGRINE_CLONES
#endif

namespace peregrine::detail {

inline std::uint32_t float_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float bits_float(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// IEEE binary16 from binary32, round to nearest even (F. Giesen's float_to_half_fast3_rtne), written
// without branches so that loops calling it vectorize.
inline std::uint16_t float_to_half(float value) {
  const std::uint32_t bits = float_bits(value);
  const std::uint32_t sign = bits & 0x80000000u;
  const std::uint32_t magnitude = bits ^ sign;
  // NaN -> quiet NaN, overflow -> infinity
  const std::uint32_t big = magnitude > 0x7F800000u ? 0x7E00u : 0x7C00u;
  // subnormal results: let the FPU round by adding 0.5 (as a float with the right exponent)
  const float denormal = bits_float(magnitude) + bits_float(126u << 23);
  const std::uint32_t small = float_bits(denormal) - (126u << 23);
  // normal results: rebias the exponent and round the mantissa to nearest even
  const std::uint32_t odd = (magnitude >> 13) & 1u;
  const std::uint32_t normal = (magnitude + (static_cast<std::uint32_t>(15 - 127) << 23) + 0xFFFu + odd) >> 13;
  std::uint32_t half = magnitude >= (143u << 23) ? big : (magnitude < (113u << 23) ? small : normal);
  return static_cast<std::uint16_t>(half | (sign >> 16));
}

// A total order on floats for sorting: larger value first, NaN after everything, -0 equal to +0.
inline std::uint32_t orderable(float value) {
  if (value != value) return 0u;
  const std::uint32_t bits = float_bits(value + 0.0f);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

}  // namespace peregrine::detail
