// Bindings of the SIGBUS guard for shared mappings (src/cpu/mapping_guard.cpp). Addresses are integers.
#include <cstdint>

#include "common.hpp"
#include "peregrine/kernels.hpp"

namespace peregrine::bindings {

void bind_memory(py::module_& m) {
  m.attr("MAPPING_GUARD_SLOTS") = kMappingGuardSlots;
  m.def(
      "guard_mapping",
      [](std::uintptr_t address, std::size_t length) {
        return guard_mapping(reinterpret_cast<void*>(address), length);
      },
      py::arg("address"), py::arg("length"),
      "Guard [address, address + length), a MAP_SHARED mapping: a SIGBUS inside it replaces the mapping with "
      "private zero pages and marks it faulted instead of killing the process. Returns the slot, or -1 when "
      "every slot is taken or the handler cannot be installed.");
  m.def("mapping_faulted", &mapping_faulted, py::arg("slot"), "Whether the guarded mapping has faulted.");
  m.def("unguard_mapping", &unguard_mapping, py::arg("slot"),
        "Stop guarding (before the mapping is unmapped).");
}

}  // namespace peregrine::bindings
