"""Run llama.cpp's own convert_hf_to_gguf.py on several checkpoints in one process (torch is imported once).

Usage: python llamacpp_convert_driver.py CONVERTER_DIR JOBS_JSON RESULTS_JSON
JOBS_JSON: a list of {"model": dir, "outtype": "f32" | "q8_0" | ..., "outfile": path}; RESULTS_JSON receives
{outfile: null (converted) | "error text"}. The converter is unmodified; two shims adapt it to what it cannot
see in tiny random checkpoints saved by transformers 5:
- tokenizer.ggml.pre: llama.cpp recognizes a BPE pre-tokenizer by hashing the tokens of a fixed text, and a
  freshly trained 400-token vocabulary matches no known hash; `PRE_TOKENIZER` (the regex family the test's
  tokenizers use) is returned instead of raising.
- hparams: transformers 5's config classes rewrite or drop keys this converter release reads (see `legacy`).
"""

import json
import sys
import traceback
from pathlib import Path

PRE_TOKENIZER = "llama-bpe"


def legacy(hparams: dict) -> dict:
    """The config keys llama.cpp's converter expects, as the original checkpoints' config.json carry them."""
    kind = hparams.get("model_type")
    if kind == "gpt_neox" and "rotary_pct" not in hparams:  # transformers 5 folds it into rope_parameters
        hparams["rotary_pct"] = hparams["rope_parameters"]["partial_rotary_factor"]
    if kind == "gpt2" and "n_ctx" not in hparams:  # transformers 5 dropped n_ctx (== n_positions)
        hparams["n_ctx"] = hparams["n_positions"]
    if kind == "falcon" and hparams["multi_query"] and not hparams["new_decoder_architecture"]:
        hparams["num_kv_heads"] = 1  # FalconConfig reports num_attention_heads for a multi-query model
    if hparams.get("architectures") == ["MptForCausalLM"]:  # transformers' name; MPT's own code says MPTForCausalLM
        hparams["architectures"] = ["MPTForCausalLM"]
    return hparams


def main(converter_dir: str, jobs_json: str, results_json: str) -> None:
    sys.path.insert(0, converter_dir)
    import convert_hf_to_gguf  # inserts its own gguf-py ahead of the installed gguf package
    from conversion.base import ModelBase, TextModel

    assert Path(sys.modules["gguf"].__file__).is_relative_to(converter_dir), "the converter must use its own gguf-py"
    load_hparams = ModelBase.load_hparams
    ModelBase.load_hparams = staticmethod(lambda *args, **kw: legacy(load_hparams(*args, **kw)))
    TextModel.get_vocab_base_pre = lambda self, tokenizer: PRE_TOKENIZER

    results = {}
    for job in json.loads(Path(jobs_json).read_text()):
        sys.argv = ["convert_hf_to_gguf.py", job["model"], "--outtype", job["outtype"], "--outfile", job["outfile"]]
        try:
            convert_hf_to_gguf.main()
            results[job["outfile"]] = None
        except BaseException:  # SystemExit included: the converter exits on unsupported architectures
            results[job["outfile"]] = traceback.format_exc(limit=-3)
    Path(results_json).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
