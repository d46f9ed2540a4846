// Model-level runs (core/model_run.h): an experiment with
//   model: {path, format: auto|hf|llama2c, tokenizer, device: cpu|cuda}
//   eval:  {text, seq_len: <model context>, stride: <seq_len>, max_tokens: 0, bos: true, batch: 8}
//   calib: {text: <eval.text>, tokens: 2048, seq_len: <eval.seq_len>, fit_tokens: 0}
// measures the perplexity of the full-precision model (`ppl_fp`, computed once per
// model and eval block) and of the W4A4 model built by the run's method and
// `quant.placement` (model/quantized_model.h) (`ppl`). cayley_sgd in the residual
// placement learns Q on the model's loss (model/model_cayley.h); every other method
// (and cayley_sgd online) is fitted per site on captured activations.
//
// Calibration tokens: the first `calib.tokens` tokens of calib.text; when that is the
// evaluation text and eval.max_tokens leaves enough tokens after the evaluated ones,
// they are taken right after them, so calibration and evaluation do not overlap
// (metric calib_overlaps_eval: 0 or 1).
#pragma once

#include <memory>

#include "core/model_run.h"

namespace sqlab {

std::shared_ptr<const ModelRunBackend> make_model_run_backend();

}  // namespace sqlab
