"""The JSON files of a checkpoint (config.json, tokenizer files, shard indexes) and safetensors headers, read as
objects: every failure to read or parse one, nesting too deep for the parser included, is a ConvertError naming
the file."""

import json
from pathlib import Path

from ..errors import ConvertError


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:  # ValueError: UnicodeDecodeError
        raise ConvertError(f"{path}: cannot read ({e})") from None


def parse_object(text: str | bytes, where) -> dict:
    """The JSON object in text; where names it in errors."""
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ConvertError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:  # a JSONDecodeError, bytes not UTF-8, an integer past Python's digit limit
        raise ConvertError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{where}: not a JSON object")
    return obj


def read_object(path: Path) -> dict:
    return parse_object(read_text(path), path)
