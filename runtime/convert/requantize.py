"""GGUF -> GGUF in another type or K-quant mix (the engine behind `llamba quantize`).

Tensor types are chosen as for convert (runtime/convert/plan.py, llama.cpp's rules, counting attn_v /
ffn_down in file order as llama.cpp does). A tensor that keeps its type is copied byte for byte;
others are dequantized (one tensor at a time) and quantized. Re-quantizing an already quantized
tensor loses more than quantizing from float, so, as in llama.cpp, it needs allow_requantize.
Metadata is copied except `general.file_type` / `quantization_version` / `alignment`; scalar
integers are written as uint32 (int32 if negative) and floats as float32, numeric arrays keep their type.
"""

from pathlib import Path

from quant import GGMLType, dequantize

from ..errors import ConvertError
from ..gguf import GGUFFile
from .plan import FLOAT_TYPES, TypeChooser, quantizable, scheme
from .writer import PlannedTensor, WriteResult, check_target, encode, finish, general_metadata, typed

_REPLACED = ("general.architecture", "general.name", "general.file_type", "general.quantization_version",
             "general.alignment")


def _producer(t, qtype):
    if qtype == t.qtype:
        return lambda: t.raw  # same type: copy the blocks unchanged

    def produce():
        n_cols = t.shape[-1]
        x = dequantize(t.raw.reshape(-1, t.raw.shape[-1]), t.qtype, n_cols)  # (n_rows, n_cols) float32
        return encode(x.reshape(t.shape), qtype)
    return produce


def quantize_gguf(src, dst, outtype: str, *, allow_requantize: bool = False, force: bool = False,
                  dry_run: bool = False, progress=None, log=None) -> WriteResult:
    """Write src's tensors in outtype (a type or mix) to dst; dst may be src itself with force.
    log(str) receives the plan (dry run; default stdout), fallback notes and the summary (default stderr)."""
    s = scheme(outtype)
    src, dst = Path(src), Path(dst)
    if not dry_run:
        check_target(dst, force)
    with GGUFFile(src) as g:
        arch, md = g.architecture, g.metadata
        n_head = int(md.get(f"{arch}.attention.head_count", 1))
        chooser = TypeChooser(s, int(md.get(f"{arch}.block_count", 0)), "output.weight" in g.tensors,
                              int(md.get(f"{arch}.expert_count", 0)),
                              n_head // max(1, int(md.get(f"{arch}.attention.head_count_kv", n_head))))
        tensors = []
        for name, t in g.tensors.items():
            qtype, note = chooser.choose(name, t.shape)
            if not quantizable(name, t.shape):
                qtype, note = t.qtype, None  # norms, biases, routers: kept as they are
            if qtype != t.qtype and t.qtype not in FLOAT_TYPES and not allow_requantize:
                raise ConvertError(f"{src}: tensor {name!r} is already quantized ({t.qtype.name}); re-quantizing "
                                   f"to {qtype.name} loses quality (use --allow-requantize to do it anyway)")
            tensors.append(PlannedTensor(name, t.shape, GGMLType(qtype), _producer(t, qtype), note))
        metadata = [typed(k, v) for k, v in md.items() if k not in _REPLACED]
        metadata += general_metadata(md.get("general.name", src.stem), s.file_type)
        return finish(dst, arch, metadata, tensors, dry_run=dry_run, force=force, progress=progress, log=log)


def add_arguments(p):
    """The options of `llamba quantize` / tools/quantize.py on an argparse parser; sets func=run_args."""
    from .plan import SCHEMES
    p.add_argument("input", help="GGUF file to read")
    p.add_argument("output", help="GGUF file to write")
    p.add_argument("type", choices=list(SCHEMES), type=str.lower, help="tensor type or K-quant mix")
    p.add_argument("--allow-requantize", action="store_true",
                   help="allow re-quantizing tensors that are already quantized (loses quality)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--dry-run", action="store_true", help="print each tensor's type and size, write nothing")
    p.set_defaults(func=run_args)


def run_args(args) -> int:
    quantize_gguf(args.input, args.output, args.type, allow_requantize=args.allow_requantize, force=args.force,
                  dry_run=args.dry_run)
    return 0
