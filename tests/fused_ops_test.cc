// The fused products of Backend (LinearMany, LinearSwiGlu, LinearAddInPlace,
// and the two with an RMSNorm before them):
// their default compositions, which the CPU backend runs, give exactly what the
// separate ops give, and their argument checks reject overlaps and mismatched
// shapes before anything is written. The CUDA kernels are compared with an f64
// reference in cuda_ops_test.cc.
#include <cmath>
#include <iterator>
#include <random>
#include <vector>

#include "engine/backend/cpu_backend.h"
#include "gtest/gtest.h"
#include "tests/cuda_test_util.h"

namespace longctx {
namespace {

using testing_cuda::Fetch;
using testing_cuda::MakePoisoned;
using testing_cuda::MakeTensor;
using testing_cuda::OwnedTensor;
using testing_cuda::RandomVec;

class FusedOpsTest : public ::testing::Test {
 protected:
  OwnedTensor Random(int64_t rows, int64_t cols, float scale = 1.f) {
    return MakeTensor(&cpu_, DType::kF32, rows, cols,
                      RandomVec(static_cast<size_t>(rows * cols), rng_, scale));
  }
  // A copy of t's values in a fresh tensor.
  OwnedTensor Copy(const Tensor& t) {
    return MakeTensor(&cpu_, DType::kF32, t.rows, t.cols, Fetch(&cpu_, t));
  }

  CpuBackend cpu_;
  std::mt19937 rng_{4321};
};

TEST_F(FusedOpsTest, LinearManyEqualsSeparateLinears) {
  const int K = 72;
  const int Ns[] = {9, 33, 7};
  for (int T : {1, 5, 9}) {
    auto x = Random(T, K);
    std::vector<OwnedTensor> w, bias, fused, separate;
    std::vector<LinearJob> jobs;
    for (size_t j = 0; j < std::size(Ns); ++j) {
      w.push_back(Random(Ns[j], K, 0.1f));
      bias.push_back(Random(1, Ns[j]));
      fused.push_back(MakePoisoned(&cpu_, T, Ns[j]));
      separate.push_back(MakePoisoned(&cpu_, T, Ns[j]));
    }
    for (size_t j = 0; j < std::size(Ns); ++j) {
      const Tensor* b = j != 1 ? &bias[j].t : nullptr;  // the middle job without bias
      jobs.push_back(LinearJob{fused[j].t, w[j].t, b});
      ASSERT_TRUE(cpu_.Linear(separate[j].t, x.t, w[j].t, b).ok());
    }
    ASSERT_TRUE(cpu_.LinearMany(jobs, x.t).ok());
    for (size_t j = 0; j < std::size(Ns); ++j) {
      EXPECT_EQ(Fetch(&cpu_, fused[j].t), Fetch(&cpu_, separate[j].t)) << "T=" << T << " job " << j;
    }
  }
}

TEST_F(FusedOpsTest, LinearManyWithoutJobsDoesNothing) {
  auto x = Random(2, 8);
  EXPECT_TRUE(cpu_.LinearMany({}, x.t).ok());
}

TEST_F(FusedOpsTest, LinearSwiGluEqualsLinearsThenSwiGlu) {
  const int K = 72, F = 33;
  for (int T : {1, 5, 9}) {
    auto x = Random(T, K), w_gate = Random(F, K, 0.2f), w_up = Random(F, K, 0.2f);
    auto out = MakePoisoned(&cpu_, T, F), scratch = MakePoisoned(&cpu_, T, F);
    ASSERT_TRUE(cpu_.LinearSwiGlu(out.t, x.t, w_gate.t, w_up.t, scratch.t).ok());
    auto gate = MakePoisoned(&cpu_, T, F), up = MakePoisoned(&cpu_, T, F);
    ASSERT_TRUE(cpu_.Linear(gate.t, x.t, w_gate.t, nullptr).ok());
    ASSERT_TRUE(cpu_.Linear(up.t, x.t, w_up.t, nullptr).ok());
    ASSERT_TRUE(cpu_.SwiGlu(gate.t, gate.t, up.t).ok());
    const std::vector<float> got = Fetch(&cpu_, out.t);
    EXPECT_EQ(got, Fetch(&cpu_, gate.t)) << "T=" << T;
    for (float v : got) ASSERT_TRUE(std::isfinite(v)) << "T=" << T;
  }
}

TEST_F(FusedOpsTest, LinearAddInPlaceEqualsLinearThenAdd) {
  const int K = 40, N = 17;
  for (int T : {1, 5, 9}) {
    auto h = Random(T, K), w = Random(N, K, 0.2f), x = Random(T, N);
    auto want = Copy(x.t);
    auto scratch = MakePoisoned(&cpu_, T, N), product = MakePoisoned(&cpu_, T, N);
    ASSERT_TRUE(cpu_.LinearAddInPlace(x.t, h.t, w.t, scratch.t).ok());
    ASSERT_TRUE(cpu_.Linear(product.t, h.t, w.t, nullptr).ok());
    ASSERT_TRUE(cpu_.AddInPlace(want.t, product.t).ok());
    EXPECT_EQ(Fetch(&cpu_, x.t), Fetch(&cpu_, want.t)) << "T=" << T;
  }
}

// Checks run before any product: a rejected call leaves every output as it was.
TEST_F(FusedOpsTest, LinearManyRejectsOverlapAndShapeBeforeWriting) {
  const int T = 3, K = 16, N = 8;
  auto x = Random(T, K), w = Random(N, K), w_bad = Random(N, K + 1);
  auto out0 = Random(T, N), out1 = Random(T, N);
  const std::vector<float> before0 = Fetch(&cpu_, out0.t), before1 = Fetch(&cpu_, out1.t);

  // The last job's weights do not fit x.
  const LinearJob bad_shape[] = {{out0.t, w.t, nullptr}, {out1.t, w_bad.t, nullptr}};
  EXPECT_EQ(cpu_.LinearMany(bad_shape, x.t).code(), absl::StatusCode::kInvalidArgument);
  // Two outputs share a row of out0.
  const LinearJob shared_out[] = {{out0.t.Rows(0, T - 1), w.t, nullptr},
                                  {out0.t.Rows(1, T - 1), w.t, nullptr}};
  auto x2 = Random(T - 1, K);
  EXPECT_EQ(cpu_.LinearMany(shared_out, x2.t).code(), absl::StatusCode::kInvalidArgument);
  // An output overlaps the input (x viewed as [T, N], N < K).
  const LinearJob into_x[] = {{out1.t, w.t, nullptr},
                              {Tensor{x.t.data, DType::kF32, T, N}, w.t, nullptr}};
  const std::vector<float> x_before = Fetch(&cpu_, x.t);
  EXPECT_EQ(cpu_.LinearMany(into_x, x.t).code(), absl::StatusCode::kInvalidArgument);
  // A bias of the wrong length.
  auto short_bias = Random(1, N - 1);
  const LinearJob bad_bias[] = {{out0.t, w.t, &short_bias.t}};
  EXPECT_EQ(cpu_.LinearMany(bad_bias, x.t).code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(Fetch(&cpu_, out0.t), before0);
  EXPECT_EQ(Fetch(&cpu_, out1.t), before1);
  EXPECT_EQ(Fetch(&cpu_, x.t), x_before);
}

TEST_F(FusedOpsTest, LinearSwiGluRejectsOverlapAndShape) {
  const int T = 2, K = 16, F = 8;
  auto x = Random(T, K), w_gate = Random(F, K), w_up = Random(F, K), w_up_bad = Random(F + 1, K);
  auto out = Random(T, F), scratch = Random(T, F);
  const std::vector<float> before = Fetch(&cpu_, out.t);
  EXPECT_EQ(cpu_.LinearSwiGlu(out.t, x.t, w_gate.t, w_up.t, out.t).code(),
            absl::StatusCode::kInvalidArgument);  // scratch is out
  EXPECT_EQ(cpu_.LinearSwiGlu(out.t, x.t, w_gate.t, w_up.t, x.t.Rows(0, T)).code(),
            absl::StatusCode::kInvalidArgument);  // scratch shape (and x)
  const Tensor x_as_out{x.t.data, DType::kF32, T, F};
  EXPECT_EQ(cpu_.LinearSwiGlu(x_as_out, x.t, w_gate.t, w_up.t, scratch.t).code(),
            absl::StatusCode::kInvalidArgument);  // out overlaps x
  EXPECT_EQ(cpu_.LinearSwiGlu(out.t, x.t, w_gate.t, w_up_bad.t, scratch.t).code(),
            absl::StatusCode::kInvalidArgument);  // gate and up differ
  EXPECT_EQ(Fetch(&cpu_, out.t), before);
}

TEST_F(FusedOpsTest, LinearAddInPlaceRejectsOverlapAndShape) {
  const int T = 2, K = 8, N = 8;
  auto x = Random(T, N), h = Random(T, K), w = Random(N, K), scratch = Random(T, N);
  const std::vector<float> before = Fetch(&cpu_, x.t);
  // x += x w^T: the destination is the input.
  EXPECT_EQ(cpu_.LinearAddInPlace(x.t, x.t, w.t, scratch.t).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu_.LinearAddInPlace(x.t, h.t, w.t, x.t).code(),
            absl::StatusCode::kInvalidArgument);  // scratch is x
  EXPECT_EQ(cpu_.LinearAddInPlace(x.t, h.t, w.t, h.t).code(),
            absl::StatusCode::kInvalidArgument);  // scratch is h
  auto w_bad = Random(N + 1, K);
  EXPECT_EQ(cpu_.LinearAddInPlace(x.t, h.t, w_bad.t, scratch.t).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Fetch(&cpu_, x.t), before);
}

// With the norm fused in front: exactly RmsNorm then the product, the
// normalised rows left in the scratch.
TEST_F(FusedOpsTest, RmsNormProductsEqualNormThenProduct) {
  const int K = 64, N = 24, F = 40;
  for (int T : {1, 4, 9}) {
    auto x = Random(T, K, 3.f), norm_w = Random(1, K), xn = MakePoisoned(&cpu_, T, K);
    auto w = Random(N, K, 0.1f), bias = Random(1, N), w_gate = Random(F, K, 0.1f),
         w_up = Random(F, K, 0.1f);
    auto ref_xn = MakePoisoned(&cpu_, T, K);
    ASSERT_TRUE(cpu_.RmsNorm(ref_xn.t, x.t, norm_w.t, 1e-5f).ok());

    auto fused = MakePoisoned(&cpu_, T, N), separate = MakePoisoned(&cpu_, T, N);
    const LinearJob jobs[] = {{fused.t, w.t, &bias.t}};
    ASSERT_TRUE(cpu_.RmsNormLinearMany(jobs, x.t, RowNorm{norm_w.t, 1e-5f, xn.t}).ok());
    ASSERT_TRUE(cpu_.Linear(separate.t, ref_xn.t, w.t, &bias.t).ok());
    EXPECT_EQ(Fetch(&cpu_, fused.t), Fetch(&cpu_, separate.t)) << "T=" << T;
    EXPECT_EQ(Fetch(&cpu_, xn.t), Fetch(&cpu_, ref_xn.t)) << "T=" << T;

    auto glu = MakePoisoned(&cpu_, T, F), scratch = MakePoisoned(&cpu_, T, F);
    auto ref_glu = MakePoisoned(&cpu_, T, F), ref_scratch = MakePoisoned(&cpu_, T, F);
    ASSERT_TRUE(cpu_.RmsNormLinearSwiGlu(glu.t, x.t, RowNorm{norm_w.t, 1e-5f, xn.t}, w_gate.t,
                                         w_up.t, scratch.t)
                    .ok());
    ASSERT_TRUE(cpu_.LinearSwiGlu(ref_glu.t, ref_xn.t, w_gate.t, w_up.t, ref_scratch.t).ok());
    EXPECT_EQ(Fetch(&cpu_, glu.t), Fetch(&cpu_, ref_glu.t)) << "T=" << T;
  }
}

TEST_F(FusedOpsTest, RmsNormFeedForwardEqualsItsTwoSteps) {
  const int K = 64, F = 40;
  for (int T : {1, 4, 9}) {
    auto x = Random(T, K, 3.f), norm_w = Random(1, K), w_gate = Random(F, K, 0.1f),
         w_up = Random(F, K, 0.1f), w_down = Random(K, F, 0.1f);
    auto ref_x = Copy(x.t), xn = MakePoisoned(&cpu_, T, K), ref_xn = MakePoisoned(&cpu_, T, K);
    auto gate = MakePoisoned(&cpu_, T, F), up = MakePoisoned(&cpu_, T, F);
    auto ref_gate = MakePoisoned(&cpu_, T, F), ref_up = MakePoisoned(&cpu_, T, F);
    ASSERT_TRUE(cpu_.RmsNormFeedForward(x.t, RowNorm{norm_w.t, 1e-5f, xn.t}, w_gate.t, w_up.t,
                                        w_down.t, gate.t, up.t)
                    .ok());
    ASSERT_TRUE(cpu_.RmsNormLinearSwiGlu(ref_gate.t, ref_x.t, RowNorm{norm_w.t, 1e-5f, ref_xn.t},
                                         w_gate.t, w_up.t, ref_up.t)
                    .ok());
    ASSERT_TRUE(cpu_.LinearAddInPlace(ref_x.t, ref_gate.t, w_down.t, ref_xn.t).ok());
    EXPECT_EQ(Fetch(&cpu_, x.t), Fetch(&cpu_, ref_x.t)) << "T=" << T;
  }
}

TEST_F(FusedOpsTest, RmsNormFeedForwardRejectsOverlapAndShapeBeforeWriting) {
  const int T = 3, K = 16, F = 8;
  auto x = Random(T, K), norm_w = Random(1, K), xn = Random(T, K), w_gate = Random(F, K),
       w_up = Random(F, K), w_down = Random(K, F), gate = Random(T, F), up = Random(T, F);
  const std::vector<float> x_before = Fetch(&cpu_, x.t), gate_before = Fetch(&cpu_, gate.t);
  const RowNorm norm{norm_w.t, 1e-5f, xn.t};
  // w_down of the wrong shape (checked by the second step, before the first runs).
  auto w_down_bad = Random(K, F - 1);
  EXPECT_EQ(cpu_.RmsNormFeedForward(x.t, norm, w_gate.t, w_up.t, w_down_bad.t, gate.t, up.t).code(),
            absl::StatusCode::kInvalidArgument);
  // gate is up; the norm's scratch is x.
  EXPECT_EQ(cpu_.RmsNormFeedForward(x.t, norm, w_gate.t, w_up.t, w_down.t, gate.t, gate.t).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu_.RmsNormFeedForward(x.t, RowNorm{norm_w.t, 1e-5f, x.t}, w_gate.t, w_up.t,
                                    w_down.t, gate.t, up.t)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Fetch(&cpu_, x.t), x_before);
  EXPECT_EQ(Fetch(&cpu_, gate.t), gate_before);
}

TEST_F(FusedOpsTest, RmsNormProductsRejectBadNormBeforeWriting) {
  const int T = 3, K = 16, N = 8;
  auto x = Random(T, K), w = Random(N, K), norm_w = Random(1, K), short_w = Random(1, K - 1);
  auto out = Random(T, N), xn = Random(T, K), scratch = Random(T, N);
  const std::vector<float> before = Fetch(&cpu_, out.t), x_before = Fetch(&cpu_, x.t);
  const LinearJob jobs[] = {{out.t, w.t, nullptr}};
  // Norm weights of the wrong length; a scratch of the wrong shape.
  EXPECT_EQ(cpu_.RmsNormLinearMany(jobs, x.t, RowNorm{short_w.t, 1e-5f, xn.t}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu_.RmsNormLinearMany(jobs, x.t, RowNorm{norm_w.t, 1e-5f, xn.t.Rows(0, T - 1)}).code(),
            absl::StatusCode::kInvalidArgument);
  // The scratch is x, or is an output.
  EXPECT_EQ(cpu_.RmsNormLinearMany(jobs, x.t, RowNorm{norm_w.t, 1e-5f, x.t}).code(),
            absl::StatusCode::kInvalidArgument);
  const Tensor out_as_xn{out.t.data, DType::kF32, T, N};
  const LinearJob small[] = {{out.t, Tensor{w.t.data, DType::kF32, N, N}, nullptr}};
  auto x_small = Random(T, N);
  EXPECT_EQ(
      cpu_.RmsNormLinearMany(small, x_small.t,
                             RowNorm{Tensor{norm_w.t.data, DType::kF32, 1, N}, 1e-5f, out_as_xn})
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cpu_.RmsNormLinearSwiGlu(out.t, x.t, RowNorm{norm_w.t, 1e-5f, x.t}, w.t, w.t, scratch.t)
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Fetch(&cpu_, out.t), before);
  EXPECT_EQ(Fetch(&cpu_, x.t), x_before);
}

}  // namespace
}  // namespace longctx
