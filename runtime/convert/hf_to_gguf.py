"""Hugging Face checkpoint directory -> GGUF file (the engine behind `llamba convert`).

The architecture-independent steps live here; what an architecture's checkpoint looks like (accepted
`architectures` names, config.json -> `{arch}.*` metadata, tensor names, shapes and transforms) lives
in its runtime/archs/<arch>.py (see runtime/archs/hf.py for that interface). Every expected tensor is
checked (none missing, none extra, shapes as config.json says) before anything is written.
"""

import re
import reprlib
from pathlib import Path

import numpy as np

from .. import archs
from ..archs.hf import IGNORED_SUFFIXES, hf_config
from ..errors import ConvertError, UnsupportedError
from .checkpoint import Checkpoint
from .jsonfile import read_object
from .plan import TypeChooser, scheme
from .vocab import vocab_metadata
from .writer import PlannedTensor, WriteResult, check_target, encode, finish, general_metadata, typed

__all__ = ["ConvertError", "convert", "find_architecture"]


def read_config(model_dir: Path) -> dict:
    if not model_dir.is_dir():
        raise ConvertError(f"{model_dir}: not a directory")
    if not (model_dir / "config.json").is_file():
        raise ConvertError(f"{model_dir}: no config.json (is this a Hugging Face model directory?)")
    return read_object(model_dir / "config.json")


def _name(cfg: dict, model_dir: Path) -> str:
    """general.name: config.json's `_name_or_path`, else the directory's name."""
    name = cfg.get("_name_or_path") or model_dir.name
    if not isinstance(name, str):
        raise ConvertError(f"config.json '_name_or_path' must be a string, got {reprlib.repr(name)}")
    return name


def find_architecture(cfg: dict):
    """(GGUF arch name, arch module) for config.json's `architectures`."""
    names = cfg.get("architectures") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConvertError(f"config.json 'architectures' must be a list of class names, got {reprlib.repr(names)}")
    known = {}
    for arch, mod in archs.ARCHITECTURES.items():
        for hf in getattr(mod, "HF_ARCHITECTURES", ()):
            known[hf] = (arch, mod)
    for name in names:
        if name in known:
            return known[name]
    raise UnsupportedError(f"architecture {names or '(none in config.json)'} is not supported; "
                           f"supported: {', '.join(sorted(known))}")


def _order(name: str):
    """token_embd first, then blocks in numeric order, then output_norm / output."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (1, int(m.group(1)), name) if m else (0 if name.startswith("token_embd") else 2, 0, name)


def _check_layer_count(config, ckpt: Checkpoint):
    """Every layer (every expert of one) has tensors of its own: a config.json describing more than the checkpoint
    holds is refused before hf_tensors lists a name for each."""
    n_expert = max(config.n_expert, 1)
    if config.n_layer * n_expert > len(ckpt.names):
        experts = f" of {config.n_expert} experts" if config.n_expert else ""
        raise ConvertError(f"config.json describes {config.n_layer} layers{experts} but the checkpoint holds only "
                           f"{len(ckpt.names)} tensors")


def _check_tensors(ckpt: Checkpoint, expected: dict):
    present = set(ckpt.names)
    ignorable = {n for n in present - expected.keys() if n.endswith(IGNORED_SUFFIXES) or n == "lm_head.weight"}
    extra = sorted(present - expected.keys() - ignorable)
    missing = sorted(expected.keys() - present)
    if missing or extra:
        parts = ([f"missing {len(missing)} tensor(s): {', '.join(missing[:5])}"] if missing else []) + \
                ([f"unexpected {len(extra)} tensor(s): {', '.join(extra[:5])}"] if extra else [])
        raise ConvertError(f"checkpoint does not match config.json: {'; '.join(parts)}")
    for name, spec in expected.items():
        if tuple(ckpt.shape(name)) != tuple(spec.shape):
            raise ConvertError(f"tensor {name!r} has shape {tuple(ckpt.shape(name))}, config.json implies "
                               f"{tuple(spec.shape)}")


def _producer(ckpt: Checkpoint, parts: list, qtype):
    """parts: [(hf_name, HFTensor)], one, or a stacked tensor's slices in expert order (each encoded alone)."""
    def encoded(hf_name, spec):
        x = ckpt.load(hf_name)  # float32, one tensor
        return encode(spec.transform(x) if spec.transform else x, qtype)

    def produce():
        if parts[0][1].expert is None:
            return encoded(*parts[0])
        return np.stack([encoded(*part) for part in parts])  # (n_expert, n_rows, row_bytes)
    return produce


def _gguf_tensors(expected: dict) -> list:
    """(GGUF name, shape, [(hf_name, HFTensor)]) in file order; stacked slices grouped in expert order."""
    groups = {}
    for hf, spec in sorted(expected.items(), key=lambda t: t[1].expert or 0):
        groups.setdefault(spec.gguf, []).append((hf, spec))
    out = []
    for gguf_name, parts in groups.items():
        spec = parts[0][1]
        shape = spec.out_shape or spec.shape
        out.append((gguf_name, shape if spec.expert is None else (len(parts), *shape), parts))
    return sorted(out, key=lambda t: _order(t[0]))


def convert(model_dir, outfile=None, outtype: str = "f16", *, force: bool = False, dry_run: bool = False,
            progress=None, log=None) -> WriteResult:
    """Convert model_dir to GGUF. outfile defaults to `<model_dir>/<name>-<outtype>.gguf`.
    log(str) receives the plan (dry run; default stdout), fallback notes and the summary (default stderr)."""
    model_dir = Path(model_dir)
    s = scheme(outtype)
    cfg = read_config(model_dir)
    arch, mod = find_architecture(cfg)
    out = Path(outfile) if outfile else model_dir / f"{model_dir.name}-{s.name}.gguf"
    if not dry_run:
        check_target(out, force)
    arch_md, config = hf_config(mod, arch, cfg)  # the Config the runtime will read from this file's metadata
    ckpt = Checkpoint(model_dir)
    _check_layer_count(config, ckpt)
    expected = mod.hf_tensors(cfg, config)
    _check_tensors(ckpt, expected)
    metadata = [typed(k, v) for k, v in arch_md.items()]
    metadata += general_metadata(_name(cfg, model_dir), s.file_type)
    metadata += [typed(k, v) for k, v in vocab_metadata(model_dir, cfg).items()]

    by_gguf = _gguf_tensors(expected)
    has_output = any(g == "output.weight" for g, _, _ in by_gguf)
    chooser = TypeChooser(s, config.n_layer, has_output, config.n_expert, config.n_head // config.n_head_kv)
    tensors = []
    for gguf_name, shape, parts in by_gguf:
        qtype, note = chooser.choose(gguf_name, shape)
        tensors.append(PlannedTensor(gguf_name, tuple(shape), qtype, _producer(ckpt, parts, qtype), note))
    return finish(out, arch, metadata, tensors, dry_run=dry_run, force=force, progress=progress, log=log)


def add_arguments(p):
    """The options of `llamba convert` / tools/convert.py on an argparse parser; sets func=run_args."""
    from .plan import SCHEMES
    p.add_argument("model_dir", help="Hugging Face model directory (config.json, safetensors or pytorch weights, "
                   "tokenizer files)")
    p.add_argument("-o", "--outfile", default=None, help="output GGUF (default: MODEL_DIR/<name>-<outtype>.gguf)")
    p.add_argument("--outtype", default="f16", choices=list(SCHEMES), type=str.lower,
                   help="tensor type or K-quant mix (default: f16)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--dry-run", action="store_true", help="print each tensor's type and size, write nothing")
    p.set_defaults(func=run_args)


def run_args(args) -> int:
    convert(args.model_dir, args.outfile, args.outtype, force=args.force, dry_run=args.dry_run)
    return 0
