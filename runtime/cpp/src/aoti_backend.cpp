// AOTInductor backend: one AOTIModelPackageLoader per size, all fed the same constant tensors, which are views of
// one private mapping of weights.bin (load_constants(..., user_managed=true): the loader keeps our tensors and
// copies nothing), so the weights exist once in memory however many sizes are loaded.
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <map>
#include <sstream>
#include <tuple>

#include "backend.h"
#include "error.h"

namespace ddit {
namespace {

at::ScalarType scalar_type(const std::string& dtype) {
  static const std::map<std::string, at::ScalarType> m = {
      {"float32", at::kFloat}, {"float16", at::kHalf}, {"bfloat16", at::kBFloat16}, {"float64", at::kDouble},
      {"int64", at::kLong},    {"int32", at::kInt},    {"int8", at::kChar},         {"uint8", at::kByte},
      {"bool", at::kBool}};
  auto it = m.find(dtype);
  if (it == m.end()) throw bundle_error("constant dtype '" + dtype + "' is not supported");
  return it->second;
}

class AotiBackend : public Backend {
 public:
  AotiBackend(const Bundle& b, const std::vector<int>& sizes)
      : weights_(b.folder + "/weights.bin"),
        device_(b.device == "cpu" ? at::Device(at::kCPU) : at::Device(b.device)),
        dtype_(model_dtype(b.dtype)),
        inputs_(b.inputs) {
    for (const auto& n : inputs_)
      if (!input_named(StepInputs{}, n))
        throw bundle_error("the AOTInductor package takes an input '" + n + "' this runtime does not know");
    std::vector<int> want = sizes;
    if (want.empty())
      for (const auto& v : b.variants) want.push_back(v.size);
    const std::string package = b.folder + "/" + b.package;
    for (int k : want) {
      loaders_[k] = load(package, b.variant(k), "variant k=" + std::to_string(k));
      sizes_.push_back(k);
    }
    if (b.has_text_model) text_ = load(package, b.text_model, "the text encoder");
    if (b.has_vae_decoder) vae_ = load(package, b.vae_decoder, "the VAE decoder");
  }

  std::string name() const override { return "aoti"; }
  bool has_text_encoder() const override { return text_ != nullptr; }

  std::vector<at::Tensor> encode(const at::Tensor& ids, const at::Tensor& mask) override {
    if (!text_) return Backend::encode(ids, mask);
    auto out = text_->run({ids, mask});
    if (out.size() != 2) throw Error(DDIT_ERR_RUNTIME, "the AOTInductor text encoder did not return (states, pooled)");
    return out;
  }
  bool has_decoder() const override { return vae_ != nullptr; }

  at::Tensor decode(const at::Tensor& latents) override {
    if (!vae_) return Backend::decode(latents);
    auto out = vae_->run({latents.to(device_, at::kFloat).contiguous()});
    if (out.empty()) throw Error(DDIT_ERR_RUNTIME, "the AOTInductor VAE decoder returned no output");
    return out[0].to(at::kCPU).to(at::kFloat).contiguous();
  }
  std::vector<int> sizes() const override { return sizes_; }
  at::Device device() const override { return device_; }

  at::Tensor run(int size, const StepInputs& in) override {
    auto it = loaders_.find(size);
    if (it == loaders_.end()) throw bundle_error("size " + std::to_string(size) + " is not loaded");
    // the loop's tensors are float32; a bf16 package takes its inputs in bf16 (generate.py: cast at the call)
    std::vector<at::Tensor> args;  // in the package's order (manifest aoti.inputs): FLUX's seven, Wan's three
    for (const auto& n : inputs_) {
      const at::Tensor* t = input_named(in, n);
      if (!t->defined()) throw argument_error("the model input '" + n + "' was not given");
      args.push_back(t->to(dtype_).contiguous());
    }
    auto out = it->second->run(args);
    if (out.empty()) throw Error(DDIT_ERR_RUNTIME, "the AOTInductor model returned no output");
    return out[0].to(at::kFloat);  // the velocity back to float32
  }

 private:
  // the StepInputs field of a manifest input name (nullptr: not one of them)
  static const at::Tensor* input_named(const StepInputs& in, const std::string& n) {
    if (n == "hidden_states") return &in.hidden_states;
    if (n == "encoder_hidden_states") return &in.encoder_hidden_states;
    if (n == "pooled_projections") return &in.pooled_projections;
    if (n == "timestep") return &in.timestep;
    if (n == "img_ids") return &in.img_ids;
    if (n == "txt_ids") return &in.txt_ids;
    if (n == "guidance") return &in.guidance;
    return nullptr;
  }

  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

  // One model of the package with its constants loaded as user-managed views of weights.bin (shared_).
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> load(const std::string& package, const AotiVariant& v,
                                                                const std::string& what) {
    auto constants = constant_map(v);
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
    try {
      loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(package, v.model);
    } catch (const std::exception& e) {
      throw bundle_error("cannot load AOTInductor model '" + v.model + "' from " + package + ": " +
                         first_line(e.what()));
    }
    for (const auto& n : loader->get_constant_fqns())
      if (!constants.count(n)) throw bundle_error(what + " needs constant '" + n +
                                                  "', which the manifest's aoti table lacks: rebuild the bundle");
    loader->load_constants(constants, /*use_inactive=*/false, /*check_full_update=*/true, /*user_managed=*/true);
    return loader;
  }

  std::unordered_map<std::string, at::Tensor> constant_map(const AotiVariant& v) {
    std::unordered_map<std::string, at::Tensor> out;
    for (const auto& c : v.constants) {
      if (c.offset + c.length > weights_.size()) {
        std::ostringstream m;
        m << "weights.bin is truncated: constant '" << c.name << "' ends at byte " << c.offset + c.length
          << ", the file has " << weights_.size();
        throw bundle_error(m.str());
      }
      auto key = std::make_tuple(c.offset, c.dtype, c.dims);
      auto it = shared_.find(key);
      if (it == shared_.end()) {
        at::Tensor t = at::from_blob(weights_.data() + c.offset, c.dims, at::TensorOptions().dtype(scalar_type(c.dtype)));
        if (t.nbytes() != c.length) throw bundle_error("constant '" + c.name + "': length does not match its shape");
        if (device_.type() != at::kCPU) t = t.to(device_);  // once per distinct tensor: shared by every size
        it = shared_.emplace(key, t).first;
      }
      out[c.name] = it->second;
    }
    return out;
  }

  // the package's precision (manifest aoti.dtype): fp32, or bf16 (the C++ reader refuses the rest)
  static at::ScalarType model_dtype(const std::string& d) {
    if (d == "fp32") return at::kFloat;
    if (d == "bf16") return at::kBFloat16;
    throw Error(DDIT_ERR_UNSUPPORTED, "the C++ runtime runs fp32 and bf16 bundles; this is " + d);
  }

  MappedFile weights_;
  at::Device device_;
  at::ScalarType dtype_;
  std::map<std::tuple<uint64_t, std::string, std::vector<int64_t>>, at::Tensor> shared_;
  std::map<int, std::unique_ptr<torch::inductor::AOTIModelPackageLoader>> loaders_;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> text_;  // the word encoder, when the package has it
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> vae_;   // FLUX's VAE decoder, when the package has it
  std::vector<int> sizes_;
  std::vector<std::string> inputs_;  // the package's input names, in order
};

}  // namespace

std::unique_ptr<Backend> make_aoti_backend(const Bundle& b, const std::vector<int>& sizes) {
  return std::make_unique<AotiBackend>(b, sizes);
}

}  // namespace ddit
