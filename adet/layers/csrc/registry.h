// Registry of the compiled ops in adet._C.
//
// Each op lives in its own folder, csrc/<op>/, and registers its Python bindings from a
// .cpp file of that folder with ADET_REGISTER_OP, so adding a kernel never touches
// vision.cpp:
//
//   csrc/<op>/<op>.h          declarations shared by the files below
//   csrc/<op>/<op>_cpu.cpp    CPU implementation; registers backend "cpu"
//   csrc/<op>/<op>_cuda.cu    CUDA kernels (plain functions, no pybind here); compiled
//                             only in CUDA builds, where WITH_CUDA is defined
//   csrc/<op>/<op>.cpp        optional: the dispatcher / bindings; registers "cuda"
//                             inside `#ifdef WITH_CUDA`
//
//   ADET_REGISTER_OP("deform_conv", "cpu", [](pybind11::module_& m) {
//     m.def("deform_conv_forward", &adet::deform_conv_forward, "...");
//   });
//
// available_ops() lists the op names; op_backends() maps each name to its backends.
#pragma once

// Only pybind11 here, so that vision.cpp compiles fast; op files include
// <torch/extension.h> themselves.
#include <pybind11/pybind11.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

// One shared object: keep these out of its exported symbols (pybind11 types are hidden).
#if defined(__GNUC__)
#define ADET_HIDDEN __attribute__((visibility("hidden")))
#else
#define ADET_HIDDEN
#endif

namespace adet {

using OpBinder = std::function<void(pybind11::module_&)>;

struct ADET_HIDDEN OpEntry {
  std::string name;     // e.g. "deform_conv"
  std::string backend;  // "cpu" or "cuda"
  OpBinder bind;        // adds the op's functions to the module (may be empty)
};

// Filled by static initializers before the module is imported; read by vision.cpp.
ADET_HIDDEN std::vector<OpEntry>& op_registry();

struct ADET_HIDDEN OpRegistrar {
  OpRegistrar(const char* name, const char* backend, OpBinder bind) {
    op_registry().push_back({name, backend, std::move(bind)});
  }
};

}  // namespace adet

#define ADET_CONCAT_INNER(a, b) a##b
#define ADET_CONCAT(a, b) ADET_CONCAT_INNER(a, b)
#define ADET_REGISTER_OP(name, backend, binder) \
  static ::adet::OpRegistrar ADET_CONCAT(adet_op_registrar_, __COUNTER__)(name, backend, binder)
