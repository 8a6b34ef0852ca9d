// Thread stacks large enough for the process's static TLS.
//
// glibc carves a thread's static TLS (the thread_local blocks of every library
// loaded at start) out of the stack size the creator asks for, and
// pthread_create fails with EINVAL when the TLS does not fit. The Debian build
// of civetweb, under prometheus-cpp's Exposer, asks for 100 KiB per thread;
// the CUDA libraries alone carry about 110 KiB of static TLS (cuBLASLt 92 KiB,
// cuBLAS 12 KiB, cudart 4 KiB) and OpenBLAS another 60 KiB, so in a CUDA build
// the metrics endpoint could not start a single worker thread.
//
// longctxd therefore defines pthread_attr_setstacksize itself (exported from
// the executable, it takes precedence over libc's for every library) and raises
// requests below kMinThreadStack before passing them on. Larger requests and
// threads that ask for no particular size are untouched.
#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cstddef>

namespace {

constexpr size_t kMinThreadStack = size_t{1} << 20;

using SetStackSizeFn = int (*)(pthread_attr_t*, size_t);

SetStackSizeFn LibcSetStackSize() {
  static const SetStackSizeFn fn =
      reinterpret_cast<SetStackSizeFn>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  return fn;
}

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t stack_size) {
  const SetStackSizeFn libc = LibcSetStackSize();
  if (libc == nullptr) return 22;  // EINVAL: nothing to forward to
  return libc(attr, std::max(stack_size, kMinThreadStack));
}
