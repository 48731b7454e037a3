// Entry point of the optional extension adet._C.
//
// The module itself only reports what was compiled in; the ops register themselves
// (see registry.h) from csrc/<op>/ and are bound here at import time.
#include "registry.h"

#include <pybind11/stl.h>

#include <map>
#include <set>

namespace adet {

std::vector<OpEntry>& op_registry() {
  static std::vector<OpEntry> registry;
  return registry;
}

namespace {

bool compiled_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::vector<std::string> available_ops() {
  std::set<std::string> names;  // sorted, unique (an op may have several backends)
  for (const auto& op : op_registry()) names.insert(op.name);
  return {names.begin(), names.end()};
}

std::map<std::string, std::vector<std::string>> op_backends() {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& op : op_registry()) out[op.name].push_back(op.backend);
  return out;
}

}  // namespace
}  // namespace adet

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "adet compiled ops (optional; every op also has a pure-PyTorch path)";
  m.def("compiled_with_cuda", &adet::compiled_with_cuda,
        "True if the extension was built with its CUDA kernels");
  m.def("available_ops", &adet::available_ops, "sorted names of the compiled ops");
  m.def("op_backends", &adet::op_backends, "op name -> backends compiled in (cpu, cuda)");
  for (const auto& op : adet::op_registry()) {
    if (op.bind) op.bind(m);
  }
}
